"""Supervised training of the video temporal mixer (:mod:`mmalign.models.temporal`) on ShapeWorld.

The analogue of stage 0 for time. Stage 0 taught the frame encoder what is in each cell; this
teaches the mixer over a clip's ``T · N`` tokens *how the object in each cell moves*: a linear head
on every output token predicts the motion direction (``left``/``right``/``up``/``down``/``still``)
of the object whose centre lies in that cell in that frame. Cells without a centre, or with two,
are ignored. Everything but the mixer is frozen, so the encoder's per-cell features are unchanged;
the head is discarded, and a following SFT stage teaches the projector and the LLM to read the new
features.

Clips are sampled and rendered on the fly (about 2 ms per 8-frame clip), so the data never repeats.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmalign.data.media import process_image
from mmalign.models.lmm import LMM
from mmalign.shapeworld import IGNORE_INDEX, WorldConfig
from mmalign.shapeworld.recipe.stage0 import adamw_warmup_cosine
from mmalign.shapeworld.video import DIRECTIONS, VideoScene, render_video, sample_video


@dataclass
class TemporalConfig:
    """What to train and how (defaults are the tiny recipe's, ``configs/shapeworld/temporal.yaml``)."""

    init_from: str = ""  # an LMM checkpoint; a mixer is added unless it has one
    data: str = ""  # a ShapeWorld dataset (its world.json is the clip distribution)
    out: str = ""
    layers: int = 2
    heads: int = 4
    steps: int = 1500
    batch_size: int = 32  # clips
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup: int = 50
    seed: int = 0
    eval_clips: int = 256
    log_every: int = 100

    def __post_init__(self) -> None:
        if not (self.init_from and self.data and self.out):
            raise ValueError("temporal training needs init_from, data and out")
        if self.steps < 1 or self.batch_size < 1 or self.eval_clips < 1:
            raise ValueError("steps, batch_size and eval_clips must be ≥ 1")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")


def motion_targets(video: VideoScene, grid: int) -> np.ndarray:
    """``(T, grid²)`` index into :data:`DIRECTIONS` of the object centred in each cell of each frame.

    :data:`IGNORE_INDEX` where no visible object's centre lies in the cell, or two do.
    """
    out = np.full((len(video.frames), grid * grid), IGNORE_INDEX, dtype=np.int64)
    for t, frame in enumerate(video.frames):
        seen: dict[int, int] = {}
        for fo in frame:
            cell = fo.row * grid + fo.col
            seen[cell] = seen.get(cell, 0) + 1
            out[t, cell] = DIRECTIONS.index(video.tracks[fo.track].direction)
        for cell, n in seen.items():
            if n > 1:
                out[t, cell] = IGNORE_INDEX
    return out


def clip_batch(
    rng: random.Random, world: WorldConfig, model: LMM, n: int, prefix: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` fresh clips: pixels ``(n, T, 3, S, S)`` and motion targets ``(n, T · grid²)``."""
    clips, targets = [], []
    for i in range(n):
        video = sample_video(rng, world, f"{prefix}{i}")
        clips.append(
            torch.stack([process_image(f, model.cfg.image_processor) for f in render_video(video, world)])
        )
        targets.append(motion_targets(video, world.grid).reshape(-1))
    return torch.stack(clips), torch.from_numpy(np.stack(targets))


def motion_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Accuracy over the cells that hold exactly one object's centre."""
    keep = targets != IGNORE_INDEX
    return float((logits.argmax(-1)[keep] == targets[keep]).float().mean())


def train_temporal(
    model: LMM, world: WorldConfig, cfg: TemporalConfig, log: Callable[[dict], None] | None = None
) -> dict[str, float]:
    """Add (if missing) and train ``model``'s temporal mixer in place; everything else stays frozen.

    Returns:
        Held-out per-cell motion accuracy (``motion``, on ``cfg.eval_clips`` fresh clips) and the
        training wall time (``seconds``).
    """
    if model.cfg.video_frames != world.video_frames:
        raise ValueError(
            f"the model takes {model.cfg.video_frames} frames per clip, the world renders {world.video_frames}"
        )
    if model.cfg.video_temporal == "none":
        raise ValueError(
            "temporal training needs video_temporal='sinusoid': without a frame code the mixer "
            "cannot tell which frame a token is from, so direction is not learnable"
        )
    per_frame = model.video_tokens // model.cfg.video_frames
    if per_frame != world.grid**2 or model.vision.num_tokens != world.grid**2:
        raise ValueError(
            f"temporal training needs one token per grid cell: {per_frame} tokens "
            f"per frame vs a {world.grid}x{world.grid} grid (video_pool 1, select='patch')"
        )
    torch.manual_seed(cfg.seed)
    if model.temporal is None:
        model.add_temporal_mixer(cfg.layers, cfg.heads)
    for p in model.parameters():
        p.requires_grad_(False)
    mixer = model.temporal
    ref = next(mixer.parameters())
    head = nn.Sequential(
        nn.LayerNorm(model.vision.hidden_size), nn.Linear(model.vision.hidden_size, len(DIRECTIONS))
    ).to(ref.device, ref.dtype)
    params = list(mixer.parameters()) + list(head.parameters())
    update = adamw_warmup_cosine(params, cfg.lr, cfg.weight_decay, cfg.warmup, cfg.steps)
    rng = random.Random(f"temporal:{cfg.seed}")
    model.eval()
    mixer.train()
    start = time.time()
    for step in range(1, cfg.steps + 1):
        clips, targets = clip_batch(rng, world, model, cfg.batch_size, f"tm-{step}-")
        logits = head(model.video_features(clips.to(ref.device, ref.dtype)))
        targets = targets.to(ref.device)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)
        update(loss)
        if log is not None and (step % cfg.log_every == 0 or step == cfg.steps):
            log({"step": step, "loss": loss.item(), "train_motion": motion_accuracy(logits, targets)})
    mixer.eval()
    for p in params:
        p.requires_grad_(False)
    clips, targets = clip_batch(
        random.Random(f"temporal-eval:{cfg.seed}"), world, model, cfg.eval_clips, "tm-eval-"
    )
    with torch.no_grad():
        logits = head(model.video_features(clips.to(ref.device, ref.dtype)))
        metrics = {"motion": motion_accuracy(logits.cpu(), targets)}
    metrics["seconds"] = time.time() - start
    return metrics
