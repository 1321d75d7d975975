"""Evaluate a checkpoint on a ShapeWorld split with the exact judges, and report its LM loss.

    python eval/shapeworld_eval.py --model runs/tiny-base --data runs/shapeworld --split test \
        --n-images 100 --n-videos 10 --out runs/tiny-base/eval_test.json

Prints caption CHAIR-i/CHAIR-s/recall, QA accuracy by type, POPE (random/popular/adversarial)
F1/accuracy/yes-ratio, video-QA accuracy by type, the mean next-token loss on the split's
LLaVA records, and a few sample captions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmalign.data.processor import MultimodalProcessor
from mmalign.eval.shapeworld import EvalLimits, evaluate_split, format_report, load_llava_split, mean_loss
from mmalign.models.checkpoint import load_lmm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Exact ShapeWorld evaluation of an mmalign checkpoint")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--n-images", type=int, default=100)
    parser.add_argument("--n-videos", type=int, default=10)
    parser.add_argument("--n-loss", type=int, default=256, help="LLaVA records used for the loss")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", help="write the full result JSON here")
    args = parser.parse_args(argv)

    model, tokenizer = load_lmm(args.model)
    processor = MultimodalProcessor.for_model(model, tokenizer)
    data = Path(args.data)
    examples = load_llava_split(data, args.split)[: args.n_loss]
    loss = mean_loss(model, processor, examples, args.batch_size)
    limits = EvalLimits(n_images=args.n_images, n_videos=args.n_videos, batch_size=args.batch_size)
    result = evaluate_split(model, processor, data, args.split, limits, progress=True)
    result["loss"] = loss
    print(f"checkpoint {args.model} on {data} [{args.split}]")
    print(format_report(result))
    print(f"LM loss (first {args.n_loss} records)  {loss:.3f}")
    for s in result["samples"][:3]:
        print(f"  {s['scene']}: {s['caption'][:120]!r}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
