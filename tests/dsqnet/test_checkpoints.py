"""Model files: our safetensors format, the authors' checkpoints, ImageNet Swin weights, and safety."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dsqnet import build_model
from dsqnet.weights.files import CheckpointError, safe_torch_load
from dsqnet.weights.imagenet import timm_to_reference_swin
from dsqnet.weights.model_file import inspect_model_file, load, load_model_file, read_metadata, save
from dsqnet.weights.opencd import load_opencd
from tests.helpers import GOLDEN_D64, CodePayload, golden_file


def test_round_trip_rebuilds_the_model_and_gives_bit_identical_outputs(tmp_path):
    model = build_model("dsqnet_swin_mini", head_width=32, drop_path_rate=0.2).eval()
    path = save(model, tmp_path / "m.safetensors", metadata={"metrics": {"f1": 0.9}, "training_data": "levir"})
    again = load(path).eval()
    assert again.config == model.config
    assert again.metadata["metrics"] == {"f1": 0.9}
    assert again.metadata["normalization"]["mean"] == [123.675, 116.28, 103.53]
    a, b = torch.randn(1, 3, 96, 128), torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        assert torch.equal(model(a, b), again(a, b))
    assert not list(tmp_path.glob(".*partial*"))


def test_inspecting_a_model_file_says_what_loading_it_would_without_reading_the_weights(tmp_path):
    model = build_model("dsqnet_swin_mini", head_width=32)
    path = save(model, tmp_path / "m.safetensors", metadata={"version": "7", "band_order": ["red", "green", "nir"]})
    summary = inspect_model_file(path)
    assert summary.config == load(path).config
    assert summary.parameters == sum(p.numel() for p in model.parameters())
    assert summary.metadata["version"] == "7"
    assert summary.metadata["band_order"] == ["red", "green", "nir"]
    assert summary.metadata["normalization"]["scale"] == "0-255"


def test_inspecting_refuses_a_file_whose_tensors_do_not_fit_the_network_it_names(tmp_path):
    path = save(build_model("dsqnet_swin_mini", head_width=32), tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        header, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    state["decode_head.conv_seg.weight"] = torch.zeros(2, 48, 1, 1)  # the config says a head 32 wide
    del state["backbone.norm0.weight"]
    save_file(state, str(path), metadata=header)
    with pytest.raises(CheckpointError, match=r"missing \(1\): backbone.norm0.weight(.|\n)*"
                                              r"decode_head.conv_seg.weight: file \(2, 48, 1, 1\)"):
        inspect_model_file(path)


def test_metadata_says_how_to_use_the_model(tmp_path):
    path = save(build_model("dsqnet_swin_mini"), tmp_path / "m.safetensors")
    meta = read_metadata(path)
    assert meta["config"]["name"] == "dsqnet_swin_mini"
    assert meta["band_order"] == ["red", "green", "blue"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_that_carries_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": CodePayload(marker)}, f)
    marker.unlink(missing_ok=True)  # torch.save does not run __reduce__'s callable, but be sure
    with pytest.raises(CheckpointError, match="refused to load .*could execute arbitrary code") as refused:
        safe_torch_load(path)
    # what it asked for, and not torch's own advice to load it with weights_only=False (nor its terminal bold)
    assert "(it asks for GLOBAL getattr)" in str(refused.value) and "weights_only" not in str(refused.value)
    assert "\x1b" not in str(refused.value)
    with pytest.raises(CheckpointError, match="refused"):
        load_model_file(path)
    assert not marker.exists()
    # And a raw (non-torch) pickle fails the same way.
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(CodePayload(marker)))
    with pytest.raises(CheckpointError, match="refused"):
        safe_torch_load(raw)
    assert not marker.exists()


def test_authors_full_checkpoint_file_loads_through_the_command_line_loader(tmp_path):
    g = golden_file(GOLDEN_D64)
    path = tmp_path / "dsqnet_levir.pth"
    torch.save({"state_dict": g["state_dict"], "meta": {"iter": 80000, "mmengine": "0.10.7"}}, path)
    model = load_model_file(path).eval()
    with torch.no_grad():
        logits = model(g["inputs"]["img_a"], g["inputs"]["img_b"])
    torch.testing.assert_close(logits, g["logits_full"], atol=1e-4, rtol=1e-4)


def test_head_width_must_equal_pyramid_width():
    g = golden_file(GOLDEN_D64)
    state = dict(g["state_dict"])
    state["decode_head.conv_seg.weight"] = torch.zeros(2, 128, 1, 1)
    with pytest.raises(CheckpointError, match="head width D=128 .* differs from pyramid width M=64"):
        load_opencd(state)


def test_weights_that_are_not_finite_are_refused_in_one_line(tmp_path):
    """Before, a model whose weights were NaN ran, and a detect run published "0 km2 observed" and exit 0."""
    model = build_model("dsqnet_swin_mini", head_width=32)
    with torch.no_grad():
        model.decode_head.conv_seg.weight[0, 0] = float("nan")
    path = save(model, tmp_path / "diverged.safetensors")
    with pytest.raises(CheckpointError) as refused:
        load_model_file(path)
    total = len(model.state_dict())
    assert str(refused.value) == (f"{path} holds weights that are not finite numbers (NaN or infinity in 1 of {total} "
                                  "tensors, first decode_head.conv_seg.weight): the file is damaged or its training "
                                  "diverged; use another model file")


def test_a_file_that_does_not_match_its_network_is_said_in_one_line(tmp_path):
    model = build_model("dsqnet_swin_mini", head_width=32)
    path = save(model, tmp_path / "m.safetensors")
    state = {k: v for k, v in load(path).state_dict().items() if k != "decode_head.conv_seg.bias"}
    save_file(state, str(tmp_path / "cut.safetensors"), metadata=dict(safe_open(str(path), "pt").metadata()))
    with pytest.raises(CheckpointError) as refused:
        load_model_file(tmp_path / "cut.safetensors")
    assert "\n" not in str(refused.value)
    assert "does not match the model it describes (missing (1): decode_head.conv_seg.bias); it is damaged" in str(
        refused.value)


def test_august_2024_checkpoints_are_recognised_and_rejected():
    g = golden_file(GOLDEN_D64)
    state = {**g["state_dict"], "decode_head.reference_area1.weight": torch.zeros(128, 4)}
    with pytest.raises(CheckpointError, match="August-2024"):
        load_opencd(state)


def test_a_wrong_backbone_override_lists_the_mismatched_keys():
    g = golden_file(GOLDEN_D64)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_opencd(g["state_dict"], embed_dim=48)


def _imagenet_files(tmp_path: Path, source) -> tuple[Path, Path]:
    """The same weights as Microsoft ships them (.pth, reference layout) and as timm does (.safetensors)."""
    backbone_state = {k: v for k, v in source.state_dict().items() if not k.startswith("norm")}
    final_dim = source.config.out_channels[-1]
    classifier = {"norm.weight": torch.ones(final_dim), "norm.bias": torch.zeros(final_dim),
                  "head.weight": torch.randn(1000, final_dim), "head.bias": torch.zeros(1000)}
    microsoft = timm_to_reference_swin(backbone_state)
    microsoft["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    microsoft["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 49, 49)
    ms_path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": {**microsoft, **classifier}}, ms_path)
    timm_path = tmp_path / "model.safetensors"
    timm_classifier = {k.replace("head.", "head.fc."): v for k, v in classifier.items()}
    save_file({**{k: v.contiguous() for k, v in backbone_state.items()}, **timm_classifier}, str(timm_path))
    return ms_path, timm_path


def test_imagenet_swin_weights_load_from_microsoft_and_timm_files(tmp_path):
    source = build_model("dsqnet_swin_mini").backbone
    for path in _imagenet_files(tmp_path, source):
        torch.manual_seed(123)  # a different initialisation than the source
        model = build_model("dsqnet_swin_mini", pretrained_backbone=path)
        got, want = model.backbone.state_dict(), source.state_dict()
        for key in want:
            if key.startswith("norm"):  # output norms are not in ImageNet files: fresh LayerNorms
                assert torch.equal(got[key], torch.ones_like(got[key]) if key.endswith("weight") else torch.zeros_like(got[key]))
            else:
                assert torch.equal(got[key], want[key]), key


def test_swin_weights_of_another_size_are_refused_with_the_differences(tmp_path):
    ms_path, _ = _imagenet_files(tmp_path, build_model("dsqnet_swin_mini").backbone)
    with pytest.raises(CheckpointError, match="(?s)does not match.*shape mismatch"):
        build_model("dsqnet_swin_t", pretrained_backbone=ms_path)


def test_foreign_safetensors_is_not_taken_for_a_dsqnet_checkpoint(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a DSQNet checkpoint"):
        load(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "missing.safetensors")


def test_an_open_cd_checkpoint_of_another_model_is_named_as_such():
    """Another open-cd model on a Swin backbone (its head without DSQNet's pyramid) ended in a
    ``KeyError: 'decode_head.CFP.mlpCov.weight'`` traceback."""
    g = golden_file(GOLDEN_D64)
    state = {k: v for k, v in g["state_dict"].items() if k.startswith("backbone.") or k.startswith("decode_head.conv_seg")}
    with pytest.raises(CheckpointError, match=r"^an open-cd checkpoint, but not of DSQNet: its decode_head has no "
                                              r"deep-semantic pyramid \('decode_head.CFP.\*'\)"):
        load_opencd(state)


def test_a_model_file_cut_short_is_said_to_be_cut_short(tmp_path):
    """An interrupted download was "not a safetensors file (... incomplete metadata, file not fully covered)"."""
    path = save(build_model("dsqnet_swin_mini", head_width=32), tmp_path / "m.safetensors")
    whole = path.read_bytes()
    header_end = 8 + int.from_bytes(whole[:8], "little")
    for kept, said in ((len(whole) // 2, f"it has {len(whole) // 2:,} bytes of the {len(whole):,} its header describes"),
                       (100, f"it ends inside its header, at byte 100 of {header_end:,}")):
        cut = tmp_path / f"cut{kept}.safetensors"
        cut.write_bytes(whole[:kept])
        for read in (load_model_file, read_metadata):
            with pytest.raises(CheckpointError) as refused:
                read(cut)
            assert str(refused.value) == f"{cut} is cut short: {said}; the download or copy was interrupted: fetch it again"
