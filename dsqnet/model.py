"""DSQNet: a Siamese backbone, the per-level temporal concat, and the DSQ head.

``build_model(name, **overrides)`` is the way in. A model is fully described by its
``DSQNetConfig``, which is plain data (JSON round-trips it), so a checkpoint can rebuild its network
from its metadata alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .head import DSQHead, DSQHeadConfig
from .layers import resize
from .swin import SwinBackbone, SwinConfig
from .vitae import ViTAEBackbone, ViTAEConfig
from .weights.imagenet import load_backbone_weights

PAD_MULTIPLE = 32  # the coarsest backbone stride

BackboneConfig = SwinConfig | ViTAEConfig
# The name a config file records for each backbone config class, and the module each one builds.
BACKBONES: dict[str, tuple[type, type[nn.Module]]] = {
    "swin": (SwinConfig, SwinBackbone),
    "vitae": (ViTAEConfig, ViTAEBackbone),
}


def backbone_type(config: BackboneConfig) -> str:
    """``"swin"`` or ``"vitae"``: the backbone family a config describes."""
    for name, (config_class, _) in BACKBONES.items():
        if isinstance(config, config_class):
            return name
    raise TypeError(f"not a backbone config: {type(config).__name__}")


def build_backbone(config: BackboneConfig) -> nn.Module:
    """The backbone module a config describes (Swin or ViTAE), with its ``out_channels``."""
    return BACKBONES[backbone_type(config)][1](config)


@dataclass(frozen=True)
class DSQNetConfig:
    """Everything needed to build a DSQNet. ``head.in_channels`` always follows the backbone."""

    name: str = "dsqnet_swin_t"
    backbone: BackboneConfig = field(default_factory=SwinConfig)
    head: DSQHeadConfig = field(default_factory=DSQHeadConfig)

    def __post_init__(self) -> None:
        if self.head.in_channels != self.backbone.out_channels:
            object.__setattr__(self, "head", dataclasses.replace(self.head, in_channels=self.backbone.out_channels))

    @property
    def backbone_type(self) -> str:
        return backbone_type(self.backbone)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "backbone_type": self.backbone_type, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DSQNetConfig":
        kind = data.get("backbone_type", "swin")  # files written before ViTAE existed say nothing
        if kind not in BACKBONES:
            raise ValueError(f"unknown backbone type {kind!r}; this version knows {', '.join(map(repr, BACKBONES))}")
        return cls(
            name=data["name"],
            backbone=BACKBONES[kind][0](**_tuples(data["backbone"])),
            head=DSQHeadConfig(**_tuples(data["head"])),
        )

    def with_overrides(self, **overrides: Any) -> "DSQNetConfig":
        """Route each keyword to the backbone or the head config by its field name.

        Backbone options are those of this config's backbone family: ``embed_dim``, ``depths``
        ... for Swin; ``embed_dims``, ``token_dims``, ``NC_depth`` ... for ViTAE.
        """
        backbone_fields = {f.name for f in dataclasses.fields(type(self.backbone))}
        head_fields = {f.name for f in dataclasses.fields(DSQHeadConfig)} - {"in_channels"}
        unknown = set(overrides) - backbone_fields - head_fields - {"name"}
        if unknown:
            raise TypeError(
                f"unknown DSQNet option(s) {sorted(unknown)}; backbone options: {sorted(backbone_fields)}, "
                f"head options: {sorted(head_fields)}"
            )
        backbone = dataclasses.replace(self.backbone, **{k: v for k, v in overrides.items() if k in backbone_fields})
        head = dataclasses.replace(self.head, **{k: v for k, v in overrides.items() if k in head_fields})
        return DSQNetConfig(name=overrides.get("name", self.name), backbone=backbone, head=head)


class DSQNet(nn.Module):
    """Two normalised images (N, 3, H, W) of any size -> change logits (N, 2, H, W).

    Inputs are zero-padded bottom/right to a multiple of 32 and the logits cropped back, as the
    reference does. Class 1 is "changed".
    """

    def __init__(self, config: DSQNetConfig) -> None:
        super().__init__()
        self.config = config
        # Provenance and input conventions (band order, normalisation); filled by dsqnet.weights.model_file.load.
        self.metadata: dict[str, Any] = {}
        self.backbone = build_backbone(config.backbone)
        self.decode_head = DSQHead(config.head)

    def forward(self, img_a: torch.Tensor, img_b: torch.Tensor) -> torch.Tensor:
        if img_a.shape != img_b.shape or img_a.ndim != 4:
            raise ValueError(
                f"img_a and img_b must be N x C x H x W tensors of one shape, got {tuple(img_a.shape)} "
                f"and {tuple(img_b.shape)}"
            )
        if self.training:
            return self._padded(img_a, img_b,
                                lambda a, b: resize(self.decode_head(*self.extract_features(a, b)), a.shape[-2:]))
        return self.infer(img_a, img_b)

    def infer(self, img_a: torch.Tensor, img_b: torch.Tensor, features: Callable | None = None,
              head: Callable | None = None) -> torch.Tensor:
        """The forward in eval mode, in its two parts, each replaceable by a compiled version of
        itself: ``features`` (``features_of_dates``) and ``head`` (``logits_of_features``)."""
        features, head = features or self.features_of_dates, head or self.logits_of_features
        return self._padded(img_a, img_b, lambda a, b: head(features(a, b), a.shape[-2:]))

    def features_of_dates(self, img_a: torch.Tensor, img_b: torch.Tensor) -> list[torch.Tensor]:
        """Both dates through the backbone in one call: each level (2N, C, h, w), date 1 first."""
        return self.backbone(torch.cat([img_a, img_b]))

    def logits_of_features(self, feats: list[torch.Tensor], size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """Logits at ``size`` from both dates' levels as ``features_of_dates`` gives them."""
        return resize(self.decode_head.forward_dates(feats), size)

    @staticmethod
    def _padded(img_a: torch.Tensor, img_b: torch.Tensor, run: Callable) -> torch.Tensor:
        """``run`` on both images zero-padded bottom/right to whole multiples of 32, cropped back."""
        height, width = img_a.shape[-2:]
        pad = (0, (-width) % PAD_MULTIPLE, 0, (-height) % PAD_MULTIPLE)
        if not any(pad):
            return run(img_a, img_b)
        logits = run(nn.functional.pad(img_a, pad), nn.functional.pad(img_b, pad))
        return logits[..., :height, :width]

    def extract_features(self, img_a: torch.Tensor, img_b: torch.Tensor) -> tuple[list, list]:
        """Run the shared backbone on both dates.

        In training the dates go through separately, as in the reference (independent
        stochastic depth, separate normalisation statistics); in eval one batched call is the
        same computation and faster.
        """
        if self.training:
            return self.backbone(img_a), self.backbone(img_b)
        feats = self.backbone(torch.cat([img_a, img_b], dim=0))
        n = img_a.shape[0]
        return [f[:n] for f in feats], [f[n:] for f in feats]


def _tuples(data: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}


_REGISTRY: dict[str, Callable[[], DSQNetConfig]] = {}


def register_model(fn: Callable[[], DSQNetConfig]) -> Callable[[], DSQNetConfig]:
    _REGISTRY[fn.__name__] = fn
    return fn


@register_model
def dsqnet_swin_t() -> DSQNetConfig:
    """The paper's Swin-T DSQNet (28.08 M parameters at head width 128)."""
    return DSQNetConfig(name="dsqnet_swin_t")


@register_model
def dsqnet_swin_mini() -> DSQNetConfig:
    """A 2.4 M-parameter DSQNet for tests, demos and CPU training: Swin embed 32, depths 2-2-2-2, head width 64."""
    return DSQNetConfig(
        name="dsqnet_swin_mini",
        backbone=SwinConfig(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), drop_path_rate=0.1),
        head=DSQHeadConfig(head_width=64),
    )


@register_model
def dsqnet_swin_demo() -> DSQNetConfig:
    """A 0.63 M-parameter DSQNet (2.5 MB) for the embedded demo: Swin embed 16, depths 2-2-2-2, head width 32, projection head on.

    Trained by ``dsqnet train --config demo`` on the demo's training tiles (the weights shipped as
    flows/assets/dsqnet_demo.safetensors). The projection head (the reference's unused Mix-FFN
    ``discriminator``) puts a non-linearity between the FDAF differences and the classifier, so
    buildings that appear and buildings that disappear can both score as change; without it the
    classifier is linear in the difference and the two kinds of change cancel (see the README on
    date exchange), and a model trained from scratch for minutes finds nothing.
    """
    return DSQNetConfig(
        name="dsqnet_swin_demo",
        backbone=SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), drop_path_rate=0.1),
        head=DSQHeadConfig(head_width=32, use_projection_head=True),
    )


@register_model
def dsqnet_vitae_s() -> DSQNetConfig:
    """The paper's best DSQNet: ViTAEv2-S backbone (19.32 M parameters at head width 128)."""
    return DSQNetConfig(name="dsqnet_vitae_s", backbone=ViTAEConfig())


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def describe_model(name: str) -> str:
    """The first line of a registered model's docstring: what it is for."""
    return (_REGISTRY[name].__doc__ or "").strip().splitlines()[0]


def model_config(name: str, **overrides: Any) -> DSQNetConfig:
    """The config of a registered model, with overrides applied."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    config = _REGISTRY[name]()
    return config.with_overrides(**overrides) if overrides else config


def build_model(name: str, pretrained_backbone: str | Path | None = None, **overrides: Any) -> DSQNet:
    """Build a registered DSQNet, e.g. ``build_model("dsqnet_swin_t", head_width=64)``.

    ``pretrained_backbone`` names a local file of ImageNet weights for the model's backbone:
    Microsoft's or timm's Swin release, or the ViTAE-Transformer project's ViTAEv2 release
    (``ViTAEv2-S.pth.tar``). Nothing is ever downloaded.
    """
    model = DSQNet(model_config(name, **overrides))
    if pretrained_backbone is not None:
        load_backbone_weights(model.backbone, pretrained_backbone)
    return model
