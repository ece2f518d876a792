"""The ViTAEv2 backbone: parity with the reference, sizes, any input size, gradients, model files."""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import pytest
import torch

from dsqnet import DSQNetConfig, ViTAEConfig, build_model, model_config
from dsqnet.weights.files import CheckpointError
from dsqnet.weights.model_file import load, read_metadata, save
from dsqnet.weights.opencd import load_opencd, to_opencd
from dsqnet.model import DSQNet
from dsqnet.vitae import ViTAEBackbone, drop_path_rates
from tests.dsqnet.test_architecture import BOX_PATH_PARAMETERS, UNUSED_REFERENCE_PARAMETERS
from tests.helpers import GOLDEN_VITAE, SMALL_VITAE, CodePayload, golden_file, vitae_golden_names, vitae_sizes

VITAE_GOLDEN = vitae_golden_names()


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small_model(**overrides) -> DSQNet:
    return build_model("dsqnet_vitae_s", **{**SMALL_VITAE, "head_width": 64, **overrides})


# --------------------------------------------------------------------------------------------------
# Parity with the authors' reference (golden files in ../shared; every dsqnet_vitae_*.pt there)


@pytest.mark.parametrize("name", VITAE_GOLDEN)
def test_logits_match_reference(name):
    g = golden_file(name)
    model = load_opencd(g["state_dict"], **vitae_sizes(g)).eval()
    assert model.config.backbone_type == "vitae"
    assert model.config.head.head_width == g["config"]["decode_head"]["channels"]
    with torch.no_grad():
        logits = model(g["inputs"]["img_a"], g["inputs"]["img_b"])
    torch.testing.assert_close(logits, g["logits_full"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", VITAE_GOLDEN)
def test_intermediates_match_reference(name):
    """The raw stage outputs (no norm0..3), pyramid output and query key, to point at a failing layer."""
    g = golden_file(name)
    model = load_opencd(g["state_dict"], **vitae_sizes(g)).eval()
    inter = g.get("intermediates") or pytest.skip(f"{name} has no intermediates")
    with torch.no_grad():
        feats, feats_b = model.backbone(g["inputs"]["img_a"]), model.backbone(g["inputs"]["img_b"])
        fine, query = model.decode_head.CFP(feats)
        _, query_b = model.decode_head.CFP(feats_b)
        key = model.decode_head.key_generation(query, query_b)
    assert len(feats) == len(inter["backbone_a"]) == 4
    for ours, theirs in zip(feats, inter["backbone_a"]):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fine, inter["cfp_out_a"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(query, inter["query_bias_a"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(key, inter["query_key"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", VITAE_GOLDEN)
def test_sizes_readable_from_the_weights_are_read_from_them(name):
    """Widths, depths, groups and window heads come from the shapes, whatever the file's size."""
    g = golden_file(name)
    reference = g["config"]["backbone"]
    inferred = load_opencd(g["state_dict"], NC_heads=reference["NC_heads"], RC_heads=reference["RC_heads"]).config
    for key in ("embed_dims", "token_dims", "NC_depth", "NC_group", "RC_group", "RC_tokens_type", "NC_tokens_type"):
        assert list(getattr(inferred.backbone, key)) == list(reference[key]), key


def test_export_to_reference_layout_round_trips():
    g = golden_file(GOLDEN_VITAE)
    exported = to_opencd(load_opencd(g["state_dict"], **vitae_sizes(g)))
    expected = {k: v for k, v in g["state_dict"].items() if not k.endswith("relative_position_index")}
    assert exported.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(exported[key], value), key


def test_an_authors_file_with_vitae_loads_through_the_command_line_loader(tmp_path):
    from dsqnet.weights.model_file import load_model_file

    g = golden_file(GOLDEN_VITAE)
    path = tmp_path / "dsqnet_vitae_levir.pth"
    torch.save({"state_dict": g["state_dict"], "meta": {"iter": 80000}}, path)
    model = load_model_file(path).eval()  # no size overrides: the heads are ViTAEv2-S's, as here
    with torch.no_grad():
        logits = model(g["inputs"]["img_a"], g["inputs"]["img_b"])
    torch.testing.assert_close(logits, g["logits_full"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", [
    {"NC_depth": (1, 0, 1, 1), "NC_group": (1, 32, 32, 64)},       # a stage without normal cells
    {"NC_heads": (2, 4, 2, 4), "RC_heads": (2, 2, 1, 2)},           # heads other than ViTAEv2-S's
    {"RC_tokens_type": ("swin", "transformer", "transformer", "swin"), "kernel_size": (5, 3, 3, 5)},
])
def test_other_sizes_are_rebuilt_from_their_weights(variant):
    """The loader infers from shapes, not from one golden file: export any ViTAE, load it back."""
    model = small_model(**variant).eval()
    global_heads = {k: variant[k] for k in ("NC_heads", "RC_heads") if k in variant}
    again = load_opencd(to_opencd(model), **global_heads).eval()
    # (A stage without normal cells cannot tell its NC_group; this one uses ViTAEv2-S's.)
    assert again.config.backbone == model.config.backbone
    assert again.config.head == model.config.head
    a, b = torch.randn(1, 3, 64, 96), torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(model(a, b), again(a, b))


def test_a_wrong_size_override_lists_the_mismatched_keys():
    g = golden_file(GOLDEN_VITAE)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_opencd(g["state_dict"], **{**vitae_sizes(g), "NC_group": (1, 8, 32, 64)})
    with pytest.raises(TypeError, match="unknown backbone option.*embed_dim"):
        load_opencd(g["state_dict"], embed_dim=32)


# --------------------------------------------------------------------------------------------------
# The architecture


@pytest.mark.parametrize("head_width, expected", [(128, 19_317_242), (64, 19_036_466)])
def test_vitae_s_parameter_count_equals_reference(head_width, expected):
    assert n_params(build_model("dsqnet_vitae_s", head_width=head_width)) == expected


def test_vitae_s_is_the_paper_configuration():
    cfg = model_config("dsqnet_vitae_s").backbone
    assert isinstance(cfg, ViTAEConfig)
    assert (cfg.embed_dims, cfg.token_dims, cfg.NC_depth) == ((64, 64, 128, 256), (64, 128, 256, 512), (2, 2, 8, 2))
    assert (cfg.RC_heads, cfg.NC_heads) == ((1, 1, 2, 4), (1, 2, 4, 8))
    assert (cfg.RC_group, cfg.NC_group) == ((1, 16, 32, 64), (1, 32, 64, 128))
    assert cfg.RC_tokens_type == cfg.NC_tokens_type == ("swin", "swin", "transformer", "transformer")
    assert (cfg.window_size, cfg.drop_path_rate, cfg.mlp_ratio, cfg.RC_mlp_ratio) == (7, 0.3, 4.0, 1.0)
    assert model_config("dsqnet_vitae_s").head.in_channels == (64, 128, 256, 512)


def test_drop_path_rates_keep_the_reference_slicing():
    rates = torch.linspace(0, 0.3, 14).tolist()
    assert drop_path_rates(ViTAEConfig()) == [tuple(rates[0:2]), tuple(rates[2:4]), tuple(rates[2:10]), tuple(rates[8:10])]


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (50, 77)])
def test_stage_shapes_follow_the_strides(size):
    backbone = ViTAEBackbone(ViTAEConfig(**SMALL_VITAE)).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, *size))
    for i, f in enumerate(feats):
        stride = 4 * 2**i
        assert f.shape == (1, SMALL_VITAE["token_dims"][i], -(-size[0] // stride), -(-size[1] // stride))


@pytest.mark.parametrize("height, width", [(250, 250), (333, 517), (64, 96)])
def test_any_input_size_gives_logits_of_that_size(height, width):
    model = small_model().eval()
    a, b = torch.randn(1, 3, height, width), torch.randn(1, 3, height, width)
    with torch.no_grad():
        logits = model(a, b)
    assert logits.shape == (1, 2, height, width)
    assert torch.isfinite(logits).all()


def test_padding_is_bottom_right_and_cropped_back():
    model = small_model().eval()
    a, b = torch.randn(1, 3, 90, 70), torch.randn(1, 3, 90, 70)
    padded = [torch.nn.functional.pad(x, (0, 96 - 70, 0, 96 - 90)) for x in (a, b)]
    with torch.no_grad():
        small, big = model(a, b), model(*padded)
    torch.testing.assert_close(small, big[..., :90, :70], atol=1e-5, rtol=1e-5)


# Parameters the reference registers in ViTAE but never uses (spec sections 1.11 and 3.2): the
# relative-position tables of every window-attention cell (relative_pos=False) and the output
# norms norm0..3 (the stage outputs are used raw).
def vitae_unused_parameters(config: ViTAEConfig) -> set[str]:
    unused = {f"backbone.norm{i}.{leaf}" for i in range(4) for leaf in ("weight", "bias")}
    for s in range(4):
        if config.RC_tokens_type[s] == "swin":
            unused.add(f"backbone.layers.{s}.RC.attn.attn.relative_position_bias_table")
        if config.NC_tokens_type[s] == "swin":
            unused |= {f"backbone.layers.{s}.NC.{j}.attn.relative_position_bias_table" for j in range(config.NC_depth[s])}
    return unused


def test_every_used_parameter_gets_a_gradient_and_the_unused_are_exactly_known():
    model = small_model(drop_path_rate=0.0).train()  # no cell skipped for the whole batch by chance
    # The reference zero-initialises the last offset layer, which would zero the gradients upstream.
    torch.nn.init.normal_(model.decode_head.point2[4].weight, std=0.05)
    a, b = torch.randn(2, 3, 64, 96), torch.randn(2, 3, 64, 96)
    model(a, b).square().mean().backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}
    unused_backbone = vitae_unused_parameters(model.config.backbone)
    assert len(unused_backbone) == 8 + 5  # the norms' weights and biases; the 5 window cells' tables
    assert no_grad == UNUSED_REFERENCE_PARAMETERS | BOX_PATH_PARAMETERS | unused_backbone


def test_unused_vitae_s_parameters_are_the_spec_count():
    """1,352 table entries and 1,920 norm parameters in ViTAEv2-S (spec section 2.1)."""
    model = build_model("dsqnet_vitae_s")
    unused = vitae_unused_parameters(model.config.backbone)
    params = dict(model.named_parameters())
    tables = sum(params[n].numel() for n in unused if "relative_position_bias_table" in n)
    norms = sum(params[n].numel() for n in unused if ".norm" in n)
    assert (tables, norms) == (1_352, 1_920)


def test_stochastic_depth_and_batchnorm_differ_between_the_two_dates_in_training():
    """Each date is its own backbone pass in training, as in the reference (spec section 1.2)."""
    model = small_model(drop_path_rate=0.5).train()
    x = torch.randn(2, 3, 64, 64)
    feats_a, feats_b = model.extract_features(x, x.clone())
    assert not torch.equal(feats_a[-1], feats_b[-1])  # independent drop-path masks
    bn = model.backbone.layers[0].RC.PCM[1]
    assert bn.num_batches_tracked.item() == 2


# --------------------------------------------------------------------------------------------------
# Configs and model files


def test_config_round_trips_through_json():
    cfg = model_config("dsqnet_vitae_s", head_width=64, NC_depth=[2, 2, 6, 2], drop_path_rate=0.1)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["backbone_type"] == "vitae"
    again = DSQNetConfig.from_dict(data)
    assert again == cfg
    assert again.backbone.dilations == ((1, 2, 3, 4), (1, 2, 3), (1, 2), (1, 2))


def test_save_and_load_rebuild_the_vitae_model_with_bit_identical_outputs(tmp_path):
    model = small_model(drop_path_rate=0.2).eval()
    path = save(model, tmp_path / "vitae.safetensors", metadata={"training_data": "levir"})
    assert read_metadata(path)["config"]["backbone_type"] == "vitae"
    again = load(path).eval()
    assert again.config == model.config and isinstance(again.backbone, ViTAEBackbone)
    a, b = torch.randn(1, 3, 64, 96), torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(model(a, b), again(a, b))


def test_overrides_are_routed_by_the_backbone_family():
    cfg = model_config("dsqnet_vitae_s", token_dims=(32, 64, 128, 256), head_width=64)
    assert cfg.head.in_channels == (32, 64, 128, 256) and cfg.head.head_width == 64
    with pytest.raises(TypeError, match="unknown DSQNet option.*embed_dim'.*NC_depth"):
        model_config("dsqnet_vitae_s", embed_dim=32)  # a Swin option
    with pytest.raises(TypeError, match="unknown DSQNet option.*NC_depth"):
        model_config("dsqnet_swin_t", NC_depth=(1, 1, 1, 1))


def test_bad_vitae_configs_name_the_problem():
    with pytest.raises(ValueError, match="4-stage ViTAE.*NC_depth"):
        ViTAEConfig(NC_depth=(2, 2, 2))
    with pytest.raises(ValueError, match="stage 3: NC_heads=3 must divide token_dims=512"):
        ViTAEConfig(NC_heads=(1, 2, 4, 3))
    with pytest.raises(ValueError, match="RC_tokens_type must be one of"):
        ViTAEConfig(RC_tokens_type=("window", "swin", "transformer", "transformer"))
    with pytest.raises(ValueError, match="unknown backbone type 'resnet'"):
        DSQNetConfig.from_dict({**model_config("dsqnet_vitae_s").to_dict(), "backbone_type": "resnet"})


# --------------------------------------------------------------------------------------------------
# ImageNet ViTAEv2 weights


def _imagenet_file(tmp_path: Path, source: ViTAEBackbone, prefix: str = "", **extra) -> Path:
    """Weights as the ViTAE-Transformer release ships them: timm's training checkpoint of the
    classifier (``state_dict`` plus EMA weights, the run's arguments, derived index buffers)."""
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("norm")}
    state["layers.0.RC.attn.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    final = source.config.out_channels[-1]
    state |= {"head.weight": torch.randn(1000, final), "head.bias": torch.zeros(1000)}
    state = {prefix + k: v for k, v in state.items()}
    path = tmp_path / "ViTAEv2-S.pth.tar"
    torch.save({"epoch": 299, "arch": "ViTAEv2_S", "state_dict": state,
                "state_dict_ema": {k: torch.zeros_like(v) for k, v in state.items()},
                "args": argparse.Namespace(model="ViTAEv2_S", lr=5e-4, drop_path=0.1), **extra}, path)
    return path


@pytest.mark.parametrize("prefix", ["", "module."])
def test_imagenet_vitae_weights_load_into_the_backbone(tmp_path, prefix):
    source = small_model().backbone
    path = _imagenet_file(tmp_path, source, prefix)
    torch.manual_seed(123)  # a different initialisation than the source
    model = small_model(pretrained_backbone=path)
    got, want = model.backbone.state_dict(), source.state_dict()
    for key in want:
        if key.startswith("norm"):  # output norms are not in ImageNet files: fresh LayerNorms
            fresh = torch.ones_like(got[key]) if key.endswith("weight") else torch.zeros_like(got[key])
            assert torch.equal(got[key], fresh), key
        else:
            assert torch.equal(got[key], want[key]), key  # from state_dict, not state_dict_ema


def test_vitae_weights_of_another_size_are_refused_with_the_differences(tmp_path):
    path = _imagenet_file(tmp_path, small_model().backbone)
    with pytest.raises(CheckpointError, match="(?s)ViTAEv2 weights .*does not match.*shape mismatch"):
        build_model("dsqnet_vitae_s", pretrained_backbone=path)
    swin = tmp_path / "swin.pth"
    torch.save({"model": build_model("dsqnet_swin_mini").backbone.state_dict()}, swin)
    with pytest.raises(CheckpointError, match=r"(?s)missing \(\d+\): layers\.0\.NC.*unexpected.*layers\.0\.blocks"):
        small_model(pretrained_backbone=swin)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_an_imagenet_file_that_carries_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "code-ran"
    path = _imagenet_file(tmp_path, small_model().backbone, payload=CodePayload(marker))
    marker.unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="refused to load .*could execute arbitrary code"):
        small_model(pretrained_backbone=path)
    assert not marker.exists()
    raw = tmp_path / "raw.pth.tar"
    raw.write_bytes(pickle.dumps(CodePayload(marker)))
    with pytest.raises(CheckpointError, match="refused"):
        small_model(pretrained_backbone=raw)
    assert not marker.exists()


def test_a_state_dict_with_no_known_backbone_is_refused():
    g = golden_file(GOLDEN_VITAE)
    head = {k: v for k, v in g["state_dict"].items() if k.startswith("decode_head.")}
    with pytest.raises(CheckpointError, match="not an open-cd DSQNet checkpoint.*ViTAEv2"):
        load_opencd(head)
