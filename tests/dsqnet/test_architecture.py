"""Shapes, parameter counts and gradient flow of the network."""

from __future__ import annotations

import pytest
import torch

from dsqnet import DSQNetConfig, build_model, list_models, model_config
from dsqnet.model import DSQNet

# Parameters the reference registers but never calls (spec section 1.11, item 2).
UNUSED_REFERENCE_PARAMETERS = {
    "decode_head.discriminator.layers.0.weight",
    "decode_head.discriminator.layers.0.bias",
    "decode_head.discriminator.layers.1.weight",
    "decode_head.discriminator.layers.1.bias",
    "decode_head.discriminator.layers.4.weight",
    "decode_head.discriminator.layers.4.bias",
    "decode_head.regions_cor.weight",
    "decode_head.regions_cor.bias",
    "decode_head.regions_cor2.weight",
    "decode_head.regions_cor2.bias",
}

# Parameters that only shape the query boxes. RoIAlign (torchvision's, as mmcv's) has no gradient
# with respect to box coordinates, so in the reference these never receive a gradient either: they
# keep their initial weights while their BatchNorm statistics still track the data.
BOX_PATH_PARAMETERS = {
    f"decode_head.{module}.{leaf}"
    for module in ("CFP.query_bias_conv", "key_generation.query_bias_conv", "key_generation.query_key_conv")
    for leaf in ("conv.weight", "bn.weight", "bn.bias")
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("head_width, expected", [(128, 28_084_140), (64, 27_757_284)])
def test_swin_t_parameter_count_equals_reference(head_width, expected):
    assert n_params(build_model("dsqnet_swin_t", head_width=head_width)) == expected


def test_swin_t_is_the_paper_configuration():
    cfg = model_config("dsqnet_swin_t")
    assert (cfg.backbone.embed_dim, cfg.backbone.depths, cfg.backbone.num_heads) == (96, (2, 2, 6, 2), (3, 6, 12, 24))
    assert (cfg.backbone.window_size, cfg.backbone.drop_path_rate, cfg.head.head_width) == (7, 0.3, 128)
    assert {"dsqnet_swin_t", "dsqnet_swin_mini"} <= set(list_models())


def test_dropping_unused_modules_removes_exactly_them():
    full = build_model("dsqnet_swin_mini")
    lean = build_model("dsqnet_swin_mini", keep_unused_modules=False)
    removed = set(full.state_dict()) - set(lean.state_dict())
    assert removed == UNUSED_REFERENCE_PARAMETERS


@pytest.mark.parametrize("height, width", [(250, 250), (333, 517), (64, 96)])
def test_any_input_size_gives_logits_of_that_size(height, width):
    model = build_model("dsqnet_swin_mini").eval()
    a, b = torch.randn(2, 3, height, width), torch.randn(2, 3, height, width)
    with torch.no_grad():
        logits = model(a, b)
    assert logits.shape == (2, 2, height, width)
    assert torch.isfinite(logits).all()


def test_padding_is_bottom_right_and_cropped_back():
    """An image and the same image with a zero (normalised) border at bottom/right agree inside."""
    model = build_model("dsqnet_swin_mini").eval()
    a, b = torch.randn(1, 3, 250, 230), torch.randn(1, 3, 250, 230)
    padded = [torch.nn.functional.pad(x, (0, 256 - 230, 0, 256 - 250)) for x in (a, b)]
    with torch.no_grad():
        small, big = model(a, b), model(*padded)
    # Logits are upsampled from 1/4 scale over the padded size, then cropped: identical pixels.
    torch.testing.assert_close(small, big[..., :250, :230], atol=1e-5, rtol=1e-5)


def test_every_used_parameter_gets_a_gradient_except_the_box_path():
    model = build_model("dsqnet_swin_mini").train()
    # The reference zero-initialises the last offset layer, which would zero the gradients upstream.
    torch.nn.init.normal_(model.decode_head.point2[4].weight, std=0.05)
    a, b = torch.randn(2, 3, 96, 96), torch.randn(2, 3, 96, 96)
    model(a, b).square().mean().backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}
    assert no_grad == UNUSED_REFERENCE_PARAMETERS | BOX_PATH_PARAMETERS


def test_tables_kept_by_an_inference_forward_serve_a_later_training_forward():
    """Window plans, grids and folded norms kept in inference mode are plain tensors, so autograd can
    record a later forward that reuses them (training after a validation, a frozen backbone)."""
    model = build_model("dsqnet_swin_mini").eval()
    a, b = torch.randn(1, 3, 64, 96), torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        expected = model(a, b)
    for p in model.backbone.parameters():
        p.requires_grad_(False)  # frozen: its derived tables are reused, not rebuilt
    logits = model(a, b)
    logits.square().mean().backward()
    torch.testing.assert_close(logits.detach(), expected)
    model.train()
    model(a, b).square().mean().backward()
    assert model.decode_head.conv_seg.weight.grad is not None


def test_box_path_batchnorm_statistics_still_train():
    model = build_model("dsqnet_swin_mini").train()
    bn = model.decode_head.key_generation.query_key_conv.bn
    before = bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64))
    assert not torch.equal(bn.running_mean, before)


def test_projection_head_flag_uses_the_discriminator():
    model = build_model("dsqnet_swin_mini", use_projection_head=True).train()
    model(torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)).sum().backward()
    assert model.decode_head.discriminator.layers[0].weight.grad is not None


def test_config_round_trips_through_plain_data():
    cfg = model_config("dsqnet_swin_t", head_width=64, drop_path_rate=0.1)
    again = DSQNetConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert n_params(DSQNet(again)) == n_params(DSQNet(cfg))


def test_bad_options_name_the_problem():
    with pytest.raises(TypeError, match="unknown DSQNet option.*heads"):
        build_model("dsqnet_swin_mini", heads=3)
    with pytest.raises(ValueError, match="unknown model 'swin'"):
        build_model("swin")
    with pytest.raises(ValueError, match="multiple of 16"):
        build_model("dsqnet_swin_mini", head_width=40)
    with pytest.raises(ValueError, match="one shape"):
        build_model("dsqnet_swin_mini")(torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 32))
