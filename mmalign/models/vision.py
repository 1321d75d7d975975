"""Image encoders behind one interface.

Every encoder maps pixels ``(B, 3, H, W)`` to a sequence of features ``(B, N, D)`` and states ``N``
(``num_tokens``) and ``D`` (``hidden_size``) up front, so that the tokenizer can expand one
``<image>`` placeholder into exactly ``N`` feature slots before the model ever runs.

Two back-ends:

* :class:`HFVisionTower` wraps a ``transformers`` vision tower (CLIP, SigLIP, or any model whose
  forward takes ``pixel_values`` and returns ``hidden_states``). As in LLaVA
  (https://arxiv.org/abs/2310.03744) features come from a chosen layer (default the penultimate,
  ``-2``) and the CLS token can be dropped.
* :class:`TimmViT` wraps a ``timm`` Vision Transformer created with ``pretrained=False`` and loaded
  from local weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

Select = Literal["patch", "cls_patch"]


@dataclass
class VisionConfig:
    """How to build (and rebuild from a checkpoint) an image encoder.

    Attributes:
        kind: ``"hf"`` for a transformers vision tower, ``"timm"`` for a timm ViT.
        feature_layer: index into the hidden states (``-1`` last, ``-2`` penultimate, as LLaVA).
        select: ``"patch"`` drops prefix (CLS) tokens, ``"cls_patch"`` keeps them.
        frozen: freeze the encoder's weights (``requires_grad=False``, eval mode).
        timm_model: timm architecture name (``kind="timm"`` only).
        timm_kwargs: keyword arguments for ``timm.create_model`` (image size, patch size, depth...).
    """

    kind: Literal["hf", "timm"] = "hf"
    feature_layer: int = -2
    select: Select = "patch"
    frozen: bool = True
    timm_model: str | None = None
    timm_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("hf", "timm"):
            raise ValueError(f"vision.kind must be 'hf' or 'timm', got {self.kind!r}")
        if self.select not in ("patch", "cls_patch"):
            raise ValueError(f"vision.select must be 'patch' or 'cls_patch', got {self.select!r}")
        if self.kind == "timm" and not self.timm_model:
            raise ValueError("vision.kind='timm' needs vision.timm_model (a timm architecture name)")


def _freeze(module: nn.Module, frozen: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(not frozen)


class HFVisionTower(nn.Module):
    """A transformers vision tower (CLIP / SigLIP / ...) returning features of one layer.

    Args:
        model: e.g. ``CLIPVisionModel`` or ``SiglipVisionModel``.
        cfg: layer and selection options.
    """

    def __init__(self, model: nn.Module, cfg: VisionConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        vc = model.config
        self.image_size: int = int(vc.image_size)
        self.patch_size: int = int(vc.patch_size)
        self.hidden_size: int = int(vc.hidden_size)
        self.grid: int = self.image_size // self.patch_size
        # CLIP-style towers prepend a CLS token to the patch embeddings; SigLIP does not.
        embeddings = getattr(getattr(model, "vision_model", model), "embeddings", None)
        n_pos = int(getattr(embeddings, "num_positions", self.grid * self.grid))
        self.num_prefix_tokens: int = n_pos - self.grid * self.grid
        n_layers = int(vc.num_hidden_layers)
        if not -(n_layers + 1) <= cfg.feature_layer <= n_layers:
            raise ValueError(f"feature_layer {cfg.feature_layer} out of range for a {n_layers}-layer tower")
        _freeze(self, cfg.frozen)

    @property
    def num_tokens(self) -> int:
        keep_prefix = self.cfg.select == "cls_patch"
        return self.grid * self.grid + (self.num_prefix_tokens if keep_prefix else 0)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode images.

        Args:
            pixel_values: ``(B, 3, H, W)`` normalised pixels.

        Returns:
            ``(B, num_tokens, hidden_size)`` features of ``cfg.feature_layer``.
        """
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values=pixel_values.to(dtype), output_hidden_states=True, return_dict=True)
        feats = out.hidden_states[self.cfg.feature_layer]
        if self.cfg.select == "patch":
            feats = feats[:, self.num_prefix_tokens :]
        return feats

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(directory)

    @classmethod
    def load(
        cls, directory: str | Path, cfg: VisionConfig, dtype: torch.dtype | None = None
    ) -> HFVisionTower:
        """Load a local transformers vision checkpoint (a full CLIP checkpoint works too)."""
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(directory)
        if getattr(config, "vision_config", None) is None:
            return cls(AutoModel.from_pretrained(directory, dtype=dtype), cfg)
        # A full CLIP/SigLIP checkpoint: load only its vision tower (keys ``vision_model.*``).
        from transformers import CLIPVisionModel, SiglipVisionModel

        towers = {"clip": CLIPVisionModel, "siglip": SiglipVisionModel}
        if config.model_type not in towers:
            raise ValueError(
                f"{directory}: cannot take a vision tower out of a '{config.model_type}' checkpoint; "
                f"save the tower alone (known full models: {sorted(towers)})"
            )
        return cls(towers[config.model_type].from_pretrained(directory, dtype=dtype), cfg)

    @classmethod
    def from_config(cls, hf_config: Any, cfg: VisionConfig) -> HFVisionTower:
        from transformers import AutoModel

        return cls(AutoModel.from_config(hf_config), cfg)


class TimmViT(nn.Module):
    """A timm Vision Transformer (``pretrained=False``) returning features of one block.

    Args:
        model: a ``timm`` VisionTransformer created with ``num_classes=0``.
        cfg: layer and selection options (``feature_layer=-1`` is the last block, before the norm).
    """

    def __init__(self, model: nn.Module, cfg: VisionConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.hidden_size: int = int(model.embed_dim)
        self.num_prefix_tokens: int = int(model.num_prefix_tokens)
        gh, gw = model.patch_embed.grid_size
        self.grid: int = int(gh)
        self.image_size: int = int(model.patch_embed.img_size[0])
        self.patch_size: int = int(model.patch_embed.patch_size[0])
        self._n_patches = int(gh * gw)
        depth = len(model.blocks)
        layer = cfg.feature_layer
        self._block_index = layer if layer >= 0 else depth + layer
        if not 0 <= self._block_index < depth:
            raise ValueError(f"feature_layer {layer} out of range for a {depth}-block timm ViT")
        _freeze(self, cfg.frozen)

    @property
    def num_tokens(self) -> int:
        keep_prefix = self.cfg.select == "cls_patch"
        return self._n_patches + (self.num_prefix_tokens if keep_prefix else 0)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` → ``(B, num_tokens, hidden_size)``."""
        dtype = next(self.model.parameters()).dtype
        x = pixel_values.to(dtype)
        x = self.model.patch_embed(x)
        x = self.model._pos_embed(x)
        x = self.model.patch_drop(x)
        x = self.model.norm_pre(x)
        for block in self.model.blocks[: self._block_index + 1]:
            x = block(x)
        if self.cfg.select == "patch":
            x = x[:, self.num_prefix_tokens :]
        return x

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"))
        spec = {"timm_model": self.cfg.timm_model, "timm_kwargs": self.cfg.timm_kwargs}
        (directory / "timm_config.json").write_text(json.dumps(spec, indent=2))

    @classmethod
    def create(cls, cfg: VisionConfig, weights: str | Path | None = None) -> TimmViT:
        """Create the architecture (never downloads) and optionally load local weights.

        Args:
            cfg: must name ``timm_model``; ``timm_kwargs`` go to ``timm.create_model``.
            weights: a ``.safetensors`` / ``.pth`` / ``.bin`` file or a directory holding
                ``model.safetensors``. Keys of a classifier head are ignored.
        """
        import timm

        kwargs = {"num_classes": 0, **cfg.timm_kwargs}
        model = timm.create_model(cfg.timm_model, pretrained=False, **kwargs)
        if weights is not None:
            state = _read_state_dict(Path(weights))
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
            missing, unexpected = model.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("head.")]
            if missing or unexpected:
                raise ValueError(
                    f"timm weights {weights} do not match {cfg.timm_model}: missing {missing[:5]}, "
                    f"unexpected {unexpected[:5]}"
                )
        return cls(model, cfg)

    @classmethod
    def load(cls, directory: str | Path, cfg: VisionConfig) -> TimmViT:
        directory = Path(directory)
        spec_file = directory / "timm_config.json"
        if spec_file.exists():
            spec = json.loads(spec_file.read_text())
            cfg = VisionConfig(**{**asdict(cfg), **spec, "kind": "timm"})
        return cls.create(cfg, directory)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"no weights at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state.get("model", state))


VisionEncoder = HFVisionTower | TimmViT


def load_vision_encoder(
    path: str | Path, cfg: VisionConfig, dtype: torch.dtype | None = None
) -> VisionEncoder:
    """Load an encoder from a local directory (HF checkpoint, or timm weights + config)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"vision encoder path {path} does not exist")
    if cfg.kind == "timm":
        return TimmViT.load(path, cfg)
    return HFVisionTower.load(path, cfg, dtype=dtype)
