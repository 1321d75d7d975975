"""Stage 0: supervised pretraining of a ShapeWorld vision encoder (the analogue of a pretrained CLIP).

End-to-end training from scratch does not learn shape identity in minutes on a CPU (measured,
see docs/shapeworld_learnability.md), so the tiny preset's encoder is first trained with direct per-cell
supervision: the encoder's patches are ShapeWorld's grid cells, and linear heads on each patch
feature predict the cell's shape, colour, size and emptiness (cross-entropy, empty cells ignored
for shape/colour/size) and the cell's row and column. The heads are discarded afterwards; the LMM
uses the encoder's features.

Why row and column: without them the features of *occupied* cells lost their location (a linear
probe recovered the cell index of 15 % of occupied cells, chance 11 %; of empty cells, 96 %), so
"Where is the red circle?" and video motion could not be read off the looked-up cell, as they
can from a real CLIP's features, which keep position.

Video frames (``Stage0Config.video_share`` of each batch): objects move between cells and
straddle cell borders, which still-image scenes never show. An encoder trained on images alone
answered existence on single video frames at chance (measured on the checkpoint shipped before
this change: 0.49-0.55 against 0.98 on images). A frame's cell targets are those of the object whose
centre lies in the cell (:func:`mmalign.shapeworld.video.frame_truth`), so the encoder learns to
assign a straddling object to one cell; a cell holding two centres is ignored for its attributes.

Scenes are sampled and rendered on the fly (sub-millisecond each), so the data never repeats.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mmalign.data.media import ImageProcessorConfig, process_image
from mmalign.shapeworld import (
    COLORS,
    IGNORE_INDEX,
    SHAPES,
    SIZES,
    WorldConfig,
    cell_targets,
    render_scene,
    sample_scene,
)
from mmalign.shapeworld.render import render_objects
from mmalign.shapeworld.video import frame_truth, sample_video
from mmalign.shapeworld.world import object_cell_targets

KEYS = ("shape", "color", "size", "empty", "row", "col")


@dataclass
class Stage0Config:
    """Optimisation of the stage-0 pretraining (defaults measured to reach ≥ 98 % cell accuracy)."""

    steps: int = 600
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 50
    seed: int = 0
    eval_scenes: int = 512
    log_every: int = 50
    video_share: float = 0.0  # share of each batch that is a random frame of a sampled video

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be ≥ 1")
        if not 0.0 <= self.video_share <= 1.0:
            raise ValueError(f"video_share must be in [0, 1], got {self.video_share}")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")


class CellHeads(nn.Module):
    """Linear classifiers on each patch feature: shape, colour, size, empty, row, column."""

    def __init__(self, hidden: int, grid: int) -> None:
        super().__init__()
        sizes = {"shape": len(SHAPES), "color": len(COLORS), "size": len(SIZES), "empty": 2}
        sizes |= {"row": grid, "col": grid}
        self.heads = nn.ModuleDict({k: nn.Linear(hidden, n) for k, n in sizes.items()})

    def forward(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, cells, D)`` → logits per key ``(B, cells, n_classes)``."""
        return {k: head(feats) for k, head in self.heads.items()}


def adamw_warmup_cosine(
    params: list[nn.Parameter], lr: float, weight_decay: float, warmup: int, steps: int
) -> Callable[[torch.Tensor], None]:
    """The supervised pretraining stages' update (stage 0, the temporal mixer): makes ``params``
    trainable and returns ``update(loss)``, one step of AdamW (betas 0.9/0.98, gradients clipped
    to norm 1) with linear warmup and cosine decay to 0.1 × ``lr`` over ``steps``."""
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / max(1, warmup)) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * s / steps))),
    )

    def update(loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()

    return update


def cell_location(world: WorldConfig) -> dict[str, np.ndarray]:
    """Row and column of each grid cell ``(grid * grid,)``, cell index ``row * grid + col``."""
    index = np.arange(world.grid**2, dtype=np.int64)
    return {"row": index // world.grid, "col": index % world.grid}


def video_frame(
    rng: random.Random, world: WorldConfig, frame_id: str
) -> tuple[Image.Image, dict[str, np.ndarray]]:
    """A random frame of a freshly sampled video and its per-cell targets (as :func:`cell_targets`).

    A cell's shape/colour/size are those of the visible object whose centre lies in it (clamped to
    the board, as the video ground truth counts it); :data:`IGNORE_INDEX` where two centres share
    a cell. ``empty`` is 0 for every cell holding a centre.
    """
    video = sample_video(rng, world, frame_id)
    t = rng.randrange(world.video_frames)
    drawn = [(tr.shape, tr.color, tr.box_at(t), tr.faint) for tr in video.tracks]
    image = render_objects(drawn, video.background, world, f"{frame_id}:{t}")
    return image, object_cell_targets(frame_truth(video.tracks, world, t), world.grid)


def make_batch(
    rng: random.Random,
    world: WorldConfig,
    ip: ImageProcessorConfig,
    n: int,
    prefix: str,
    video_share: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sample and render ``n`` examples: pixels ``(n, 3, S, S)`` and per-cell targets ``(n, cells)``.

    The first ``round(n * video_share)`` are video frames (:func:`video_frame`), the rest scenes.
    """
    pixels, targets = [], {k: [] for k in KEYS}
    location = cell_location(world)
    n_video = round(n * video_share)
    for i in range(n):
        if i < n_video:
            image, cells = video_frame(rng, world, f"{prefix}v{i}")
        else:
            scene = sample_scene(rng, world, f"{prefix}{i}")
            image, cells = render_scene(scene, world), cell_targets(scene, world)
        pixels.append(process_image(image, ip))
        cells = {**cells, **location}
        for k in KEYS:
            targets[k].append(cells[k])
    return torch.stack(pixels), {k: torch.from_numpy(np.stack(v)) for k, v in targets.items()}


def cell_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over keys of the mean cross-entropy (ignoring empty cells for shape/colour/size)."""
    total = torch.zeros((), device=next(iter(logits.values())).device)
    for k in KEYS:
        total = total + F.cross_entropy(
            logits[k].flatten(0, 1), targets[k].flatten(), ignore_index=IGNORE_INDEX
        )
    return total


@torch.no_grad()
def cell_accuracy(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-key accuracy and whole-cell accuracy (empty right and, if occupied, all attributes right)."""
    pred = {k: v.argmax(-1) for k, v in logits.items()}
    occupied = targets["empty"] == 0
    out = {"empty": float((pred["empty"] == targets["empty"]).float().mean())}
    cell_ok = pred["empty"] == targets["empty"]
    for k in ("shape", "color", "size"):
        hit = pred[k] == targets[k]
        out[k] = float(hit[occupied].float().mean())
        cell_ok = cell_ok & (hit | ~occupied)
    out["cell"] = float(cell_ok.float().mean())
    for k in ("row", "col"):
        if k in pred:
            out[k] = float((pred[k] == targets[k]).float().mean())
    return out


def pretrain_encoder(
    encoder: nn.Module,
    world: WorldConfig,
    ip: ImageProcessorConfig,
    cfg: Stage0Config,
    log: Callable[[dict], None] | None = None,
) -> dict[str, float]:
    """Train ``encoder`` (in place) on per-cell ShapeWorld supervision.

    Args:
        encoder: an image encoder whose patch grid equals ``world.grid`` and with ``select="patch"``.
        world: the scene distribution to sample from.
        ip: pixel processing (must match what the LMM will use).
        cfg: optimisation settings.
        log: called with a metrics dict every ``cfg.log_every`` steps and at the end.

    Returns:
        Held-out accuracies (``cell``, ``shape``, ``color``, ``size``, ``empty``) and wall time.
    """
    if encoder.grid != world.grid or encoder.num_tokens != world.grid**2:
        raise ValueError(
            f"stage 0 needs one patch per grid cell: encoder grid {encoder.grid} with {encoder.num_tokens} "
            f"tokens vs world grid {world.grid} (set patch_size = image_size / grid and select='patch')"
        )
    torch.manual_seed(cfg.seed)
    heads = CellHeads(encoder.hidden_size, world.grid)
    params = list(encoder.parameters()) + list(heads.parameters())
    update = adamw_warmup_cosine(params, cfg.lr, cfg.weight_decay, cfg.warmup, cfg.steps)
    rng = random.Random(f"stage0:{cfg.seed}")
    encoder.train()
    heads.train()
    start = time.time()
    for step in range(1, cfg.steps + 1):
        pixels, targets = make_batch(rng, world, ip, cfg.batch_size, f"s0-{step}-", cfg.video_share)
        logits = heads(encoder(pixels))
        loss = cell_loss(logits, targets)
        update(loss)
        if log is not None and (step % cfg.log_every == 0 or step == cfg.steps):
            log(
                {
                    "step": step,
                    "loss": loss.item(),
                    **{f"train_{k}": v for k, v in cell_accuracy(logits, targets).items()},
                }
            )
    encoder.eval()
    heads.eval()
    pixels, targets = make_batch(
        random.Random(f"stage0-eval:{cfg.seed}"), world, ip, cfg.eval_scenes, "s0-eval-"
    )
    with torch.no_grad():
        metrics = cell_accuracy(heads(encoder(pixels)), targets)
        if cfg.video_share > 0:
            pixels, targets = make_batch(
                random.Random(f"stage0-eval-video:{cfg.seed}"), world, ip, cfg.eval_scenes, "s0-evalv-", 1.0
            )
            video = cell_accuracy(heads(encoder(pixels)), targets)
            metrics |= {f"video_{k}": v for k, v in video.items()}
    metrics["seconds"] = time.time() - start
    return metrics
