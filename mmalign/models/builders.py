"""Named presets: plain functions that expose every knob (torchtune style).

* :func:`tiny_lmm` — a few-million-parameter LMM built from configs (no downloads): a tiny
  CLIP / SigLIP / timm ViT whose patches can match ShapeWorld's grid cells, a projector and a tiny
  Llama. Tests and the embedded ShapeWorld default use it.
* :func:`llava15` — LLaVA-1.5's recipe (https://arxiv.org/abs/2310.03744) assembled from local
  CLIP-ViT-L/336 and Vicuna folders: penultimate layer, CLS dropped, ``mlp2x_gelu``, pad-to-square,
  ``vicuna_v1`` template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from mmalign.data.media import ImageProcessorConfig
from mmalign.models.checkpoint import add_media_tokens, build_lmm
from mmalign.models.lmm import LMM, LMMConfig
from mmalign.models.projector import build_projector
from mmalign.models.vision import HFVisionTower, TimmViT, VisionConfig


def tiny_vision(
    kind: Literal["clip", "siglip", "timm"] = "clip",
    image_size: int = 60,
    patch_size: int = 20,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 512,
    feature_layer: int = -1,
    select: Literal["patch", "cls_patch"] = "patch",
    frozen: bool = False,
) -> HFVisionTower | TimmViT:
    """A small ViT from config (random weights)."""
    if kind == "timm":
        cfg = VisionConfig(
            kind="timm",
            feature_layer=feature_layer,
            select=select,
            frozen=frozen,
            timm_model="vit_tiny_patch16_224",
            timm_kwargs={
                "img_size": image_size,
                "patch_size": patch_size,
                "embed_dim": hidden_size,
                "depth": num_layers,
                "num_heads": num_heads,
                "mlp_ratio": intermediate_size / hidden_size,
            },
        )
        return TimmViT.create(cfg)
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    config_cls = CLIPVisionConfig if kind == "clip" else SiglipVisionConfig
    hf_config = config_cls(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
    )
    return HFVisionTower.from_config(
        hf_config, VisionConfig(kind="hf", feature_layer=feature_layer, select=select, frozen=frozen)
    )


def tiny_llm_config(
    vocab_size: int,
    hidden_size: int = 192,
    num_layers: int = 3,
    num_heads: int = 6,
    intermediate_size: int = 512,
    max_positions: int = 1024,
    **token_ids: int | None,
) -> Any:
    """A small ``LlamaConfig``; ``token_ids`` may set ``bos_token_id``/``eos_token_id``/``pad_token_id``."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        **{k: v for k, v in token_ids.items() if v is not None},
    )


def tiny_lmm(
    tokenizer: Any,
    vision: HFVisionTower | TimmViT | None = None,
    llm_hidden_size: int = 192,
    llm_layers: int = 3,
    llm_heads: int = 6,
    llm_intermediate_size: int = 512,
    projector: str = "mlp2x_gelu",
    video_frames: int = 4,
    video_pool: int = 1,
    video_temporal: str = "none",
    image_spatial: str = "none",
    image_mode: Literal["pad", "resize"] = "resize",
    template: str | None = None,
    seed: int = 0,
) -> LMM:
    """A tiny LMM from configs: ``vision`` (default :func:`tiny_vision`) + projector + tiny Llama.

    Args:
        tokenizer: holds ``<image>``/``<video>`` (added if missing) and sets the vocabulary size.
        vision: an image encoder; its ``image_size`` sets the pixel processing size.
        seed: seeds weight initialisation, so two calls build identical models.
    """
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng():  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        vision = vision if vision is not None else tiny_vision()
        cfg = LMMConfig(
            vision=vision.cfg,
            projector=projector,
            video_frames=video_frames,
            video_pool=video_pool,
            video_temporal=video_temporal,
            image_spatial=image_spatial,
            image_processor=ImageProcessorConfig(
                size=vision.image_size, mode=image_mode, mean=(0.5,) * 3, std=(0.5,) * 3
            ),
            template=template,
        )
        llm_config = tiny_llm_config(
            len(tokenizer),
            llm_hidden_size,
            llm_layers,
            llm_heads,
            llm_intermediate_size,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        llm = AutoModelForCausalLM.from_config(llm_config)
        add_media_tokens(tokenizer, llm, cfg)
        proj = build_projector(projector, vision.hidden_size, llm.config.hidden_size)
        return LMM(vision, proj, llm, cfg)


def llava15(
    vision_path: str | Path,
    llm_path: str | Path,
    dtype: torch.dtype | None = None,
    freeze_vision: bool = True,
    video_frames: int = 8,
) -> tuple[LMM, Any]:
    """LLaVA-1.5 from local folders, e.g. ``clip-vit-large-patch14-336`` + ``vicuna-7b-v1.5``."""
    cfg = LMMConfig(
        vision=VisionConfig(kind="hf", feature_layer=-2, select="patch", frozen=freeze_vision),
        projector="mlp2x_gelu",
        video_frames=video_frames,
        image_processor=ImageProcessorConfig(size=336, mode="pad"),
        template="vicuna_v1",
    )
    return build_lmm(vision_path, llm_path, cfg, dtype=dtype)
