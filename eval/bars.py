"""Print the tiny ShapeWorld model's quality bars (measured vs required) for one or more checkpoints.

    python eval/bars.py --model sft=runs/sft/final --data runs/shapeworld
    python eval/bars.py --model sft=checkpoints/tiny-shapeworld --model control=runs/control/final \
        --model dpo=runs/dpo/final --data runs/shapeworld --out runs/bars.json

Bars (see mmalign/eval/bars.py): clear-scene existence/colour/count/position accuracy, existence
yes-ratio and caption CHAIR-i on the held-out test split; prior-driven hallucination (false "yes"
and caption mentions of the absent co-occurrence partner on violating scenes, beside the control
rate); video motion direction and existence; POPE F1 and yes-ratio per split. Each model is
measured in the terse wording (``Is there a star``) and the natural one (``Is there a star in the
image?`` and paraphrases; ``--wording``). Models are given as NAME=DIR (an mmalign checkpoint
directory or a llava-hf folder); the table has one column per model, in the order given, so a
method is read beside its same-budget control continuation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mmalign.data.processor import MultimodalProcessor
from mmalign.eval.bars import BarLimits, format_table, measure_wordings, passes
from mmalign.eval.common import parse_model_specs
from mmalign.models.checkpoint import load_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ShapeWorld quality bars, measured vs required")
    parser.add_argument("--model", action="append", required=True, help="NAME=DIR (repeatable)")
    parser.add_argument(
        "--data", required=True, help="a dataset from `python -m mmalign.shapeworld generate`"
    )
    parser.add_argument("--n-images", type=int, default=200)
    parser.add_argument("--n-videos", type=int, default=100)
    parser.add_argument("--n-prior", type=int, default=100, help="prior probes per group")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--wording",
        nargs="+",
        choices=["terse", "natural", "as-written"],
        default=["terse", "natural"],
        help="how lookup questions are asked (one column per model and wording; default: both)",
    )
    parser.add_argument("--out", help="write every measurement as JSON here")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 unless the first model passes every bar in every wording"
    )
    args = parser.parse_args(argv)

    limits = BarLimits(args.n_images, args.n_videos, args.n_prior, args.batch_size)
    results = {}
    try:
        models = parse_model_specs(args.model)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
    missing = [str(path) for _, path in models if not path.is_dir()]
    if missing:
        raise SystemExit(f"error: model folder(s) not found: {', '.join(missing)}")
    for name, folder in models:
        path = str(folder)
        start = time.time()
        model, tokenizer = load_model(path)
        model.eval()
        processor = MultimodalProcessor.for_model(model, tokenizer)
        wordings = list(dict.fromkeys(None if w == "as-written" else w for w in args.wording))
        measured = measure_wordings(model, processor, args.data, limits, progress=True, wordings=wordings)
        for wording, result in measured.items():
            column = name if len(measured) == 1 else f"{name} ({wording or 'as written'})"
            results[column] = {**result, "checkpoint": path}
        print(f"{name}: measured in {time.time() - start:.0f} s", file=sys.stderr)
    print(format_table(results))
    first = next(iter(results.values()))
    print(f"\n(n = {json.dumps(first['n'])})")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    if args.check:
        columns = list(results)[: len(set(args.wording))]  # the first model, every wording
        failed = [f"{k} ({c})" for c in columns for k, ok in passes(results[c]).items() if ok is False]
        if failed:
            print(f"FAILED bars: {', '.join(failed)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
