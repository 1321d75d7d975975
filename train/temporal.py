"""Train a video temporal mixer on ShapeWorld motion, everything else frozen (single process).

Launch (CPU is fine, a few minutes):

    python train/temporal.py --config configs/shapeworld/temporal.yaml

Loads the LMM checkpoint ``init_from``, adds a mixer of ``layers`` attention blocks over each clip's
tokens (:mod:`mmalign.models.temporal`) unless it has one, trains it with a per-token motion head
on freshly rendered clips of the dataset's world (:mod:`mmalign.shapeworld.recipe.temporal`) and saves the
LMM with its mixer to ``out`` (``temporal_metrics.json`` beside it). An SFT stage follows, which
teaches the projector and the LLM to read the new features.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mmalign.cli import parse_run_args
from mmalign.config import save_config
from mmalign.models.checkpoint import load_model, save_lmm
from mmalign.shapeworld.recipe.temporal import TemporalConfig, train_temporal
from mmalign.shapeworld.recipe.tiny_preset import read_world


def main(argv: list[str] | None = None) -> int:
    _, cfg = parse_run_args(TemporalConfig, __doc__.split("\n")[0], argv, dry_run=False)
    world = read_world(cfg.data)
    model, tokenizer = load_model(cfg.init_from)

    def log(m: dict) -> None:
        print(
            f"[temporal] step {m['step']:>5}  loss {m['loss']:.4f}  motion acc {m['train_motion']:.3f}",
            flush=True,
        )

    metrics = train_temporal(model, world, cfg, log=log)
    out = save_lmm(model, tokenizer, cfg.out)
    save_config(cfg, Path(out) / "temporal.yaml")
    (Path(out) / "temporal_metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
