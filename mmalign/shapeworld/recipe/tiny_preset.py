"""Build the tiny ShapeWorld LMM offline: tokenizer + stage-0 vision encoder + projector + tiny Llama.

Steps (all from configs, no downloads):

1. a byte-level BPE tokenizer trained on the dataset's text (``llava/train.json``) plus the
   closed vocabulary, with ``<image>``/``<video>`` and the ``chatml`` template;
2. a tiny CLIP vision tower whose 20-px patches are ShapeWorld's 3×3 grid cells, pretrained with
   per-cell supervision (:mod:`mmalign.shapeworld.recipe.stage0`) on the dataset's world distribution and
   then frozen;
3. a ``mlp2x_gelu`` projector and a tiny Llama, randomly initialised (SFT trains them);
4. saved as an ordinary checkpoint directory (:func:`mmalign.models.checkpoint.save_lmm`), which
   everything downstream loads like a real model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmalign.config import save_config
from mmalign.data.media import ImageProcessorConfig
from mmalign.data.tokenizer import train_bpe_tokenizer
from mmalign.models.builders import tiny_lmm, tiny_vision
from mmalign.models.checkpoint import save_lmm
from mmalign.shapeworld import BACKGROUNDS, COLORS, SHAPES, SIZES, WorldConfig
from mmalign.shapeworld.recipe.stage0 import Stage0Config, pretrain_encoder


@dataclass
class TinyPresetConfig:
    """Sizes of the tiny preset and its stage-0 pretraining.

    Attributes:
        data: a ShapeWorld dataset folder (``python -m mmalign.shapeworld generate``).
        out: where the checkpoint directory is written.
        vocab_size: BPE vocabulary size.
        vision_*: the tiny CLIP tower (patch = cell: ``patch_size = image_size / grid``).
        llm_*: the tiny Llama.
        video_frames / video_pool: frames per clip and per-frame pooling stride.
        video_temporal: ``"none"`` or ``"sinusoid"`` (a code of the frame index on each frame's
            tokens, :mod:`mmalign.models.video`).
        image_spatial: ``"none"`` or ``"sinusoid"`` (a code of each patch's row and column on its
            token, :mod:`mmalign.models.codes`).
        chat_template: built-in template of the tokenizer (``mmalign.data.templates``); the
            ShapeWorld recipe uses ``plain`` with terse questions (see ``WorldConfig.question_style``).
        stage0: encoder pretraining settings.
        seed: initialisation seed of projector and LLM.
    """

    data: str = "runs/shapeworld"
    out: str = "runs/tiny-base"
    vocab_size: int = 512
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    llm_hidden: int = 192
    llm_layers: int = 3
    llm_heads: int = 6
    llm_intermediate: int = 512
    projector: str = "mlp2x_gelu"
    video_frames: int = 8
    video_pool: int = 1
    video_temporal: str = "none"
    image_spatial: str = "none"
    chat_template: str = "chatml"
    stage0: Stage0Config = field(default_factory=Stage0Config)
    seed: int = 0


def read_world(data_dir: str | Path) -> WorldConfig:
    """The :class:`WorldConfig` a dataset was generated with (its ``world.json``)."""
    path = Path(data_dir) / "world.json"
    if not path.exists():
        raise FileNotFoundError(f"{data_dir} is not a ShapeWorld dataset (no world.json); generate one first")
    return WorldConfig.from_dict(json.loads(path.read_text())["params"]["config"])


def shapeworld_texts(data_dir: str | Path) -> Iterator[str]:
    """Every human and gpt turn of the training records, plus the closed vocabulary."""
    records = json.loads((Path(data_dir) / "llava" / "train.json").read_text())
    for rec in records:
        for turn in rec["conversations"]:
            yield turn["value"].replace("<image>", "").replace("<video>", "")
    yield " ".join([*SHAPES, *COLORS, *SIZES, *BACKGROUNDS, *(s + "s" for s in SHAPES)])


def build_tiny_shapeworld(cfg: TinyPresetConfig, log: Callable[[dict], None] | None = None) -> dict:
    """Build and save the tiny preset; returns a summary (stage-0 accuracy, sizes, timings)."""
    start = time.time()
    world = read_world(cfg.data)
    if world.image_size % world.grid:
        raise ValueError(f"image_size {world.image_size} is not a multiple of grid {world.grid}")
    tokenizer = train_bpe_tokenizer(
        shapeworld_texts(cfg.data), vocab_size=cfg.vocab_size, template=cfg.chat_template
    )

    torch.manual_seed(cfg.seed)
    vision = tiny_vision(
        kind="clip",
        image_size=world.image_size,
        patch_size=world.image_size // world.grid,
        hidden_size=cfg.vision_hidden,
        num_layers=cfg.vision_layers,
        num_heads=cfg.vision_heads,
        intermediate_size=4 * cfg.vision_hidden,
        feature_layer=-1,
        select="patch",
    )
    ip = ImageProcessorConfig(size=world.image_size, mode="resize", mean=(0.5,) * 3, std=(0.5,) * 3)
    stage0 = pretrain_encoder(vision, world, ip, cfg.stage0, log=log)
    vision.cfg.frozen = True
    for p in vision.parameters():
        p.requires_grad_(False)

    model = tiny_lmm(
        tokenizer,
        vision,
        llm_hidden_size=cfg.llm_hidden,
        llm_layers=cfg.llm_layers,
        llm_heads=cfg.llm_heads,
        llm_intermediate_size=cfg.llm_intermediate,
        projector=cfg.projector,
        video_frames=cfg.video_frames,
        video_pool=cfg.video_pool,
        video_temporal=cfg.video_temporal,
        image_spatial=cfg.image_spatial,
        image_mode="resize",
        seed=cfg.seed,
    )
    out = save_lmm(model, tokenizer, cfg.out)
    save_config(cfg, out / "preset.yaml")
    summary = {
        "stage0": stage0,
        "params": {
            "vision": sum(p.numel() for p in model.vision.parameters()),
            "projector": sum(p.numel() for p in model.projector.parameters()),
            "llm": sum(p.numel() for p in model.llm.parameters()),
        },
        "vocab": len(tokenizer),
        "image_tokens": model.image_tokens,
        "video_tokens": model.video_tokens,
        "seconds": time.time() - start,
        "out": str(out),
    }
    (out / "stage0_metrics.json").write_text(json.dumps(summary, indent=2))
    return summary
