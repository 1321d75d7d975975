"""Build the tiny ShapeWorld preset: tokenizer + stage-0 pretrained vision encoder + projector + tiny LLM.

Launch (single process, CPU is fine — about a minute):

    python train/stage0.py --config configs/shapeworld/tiny_preset.yaml data=runs/shapeworld out=runs/tiny-base

Departures from LLaVA: LLaVA starts from OpenAI's CLIP, pretrained contrastively on 400M pairs;
nothing can be downloaded here, so the encoder is a tiny CLIP tower trained with direct per-cell
supervision on ShapeWorld (shape / colour / size / empty per 20-px grid cell), then frozen.
The projector and the LLM are left randomly initialised for SFT.
"""

from __future__ import annotations

import json
import sys

from mmalign.cli import parse_run_args
from mmalign.shapeworld.recipe.tiny_preset import TinyPresetConfig, build_tiny_shapeworld


def main(argv: list[str] | None = None) -> int:
    _, cfg = parse_run_args(TinyPresetConfig, __doc__.split("\n")[0], argv, dry_run=False)

    def log(m: dict) -> None:
        print(
            f"[stage0] step {m['step']:>4}  loss {m['loss']:.4f}  cell acc {m['train_cell']:.3f}", flush=True
        )

    summary = build_tiny_shapeworld(cfg, log=log)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
