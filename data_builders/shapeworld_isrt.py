"""i-SRT's ShapeWorld data: the label-free prompt pool and the judge/revise format records.

Launch::

    # the prompt pool of the training clips (JSONL: id, video, question, truth, annotation)
    python data_builders/shapeworld_isrt.py pool --data runs/shapeworld --out runs/isrt-proof/data/pool.jsonl
    # the judge/revise format records (LLaVA JSON) for the format continuation
    # (configs/isrt/judge_format.yaml), in the wording of configs/isrt/tiny_shapeworld.yaml's prompts
    python data_builders/shapeworld_isrt.py format --data runs/shapeworld \\
        --isrt-config configs/isrt/tiny_shapeworld.yaml --out runs/isrt-proof/data/format.json

Both are deterministic in ``--seed``; what each record holds and why:
:mod:`mmalign.shapeworld.recipe.isrt_data`. A ``summary`` is printed (and written beside ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from mmalign.config import load_config
from mmalign.isrt.config import ISRTConfig
from mmalign.shapeworld.recipe.isrt_data import format_records, pool_records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pool = sub.add_parser("pool", help="the label-free prompt pool (JSONL)")
    fmt = sub.add_parser("format", help="judge and revise format records (LLaVA JSON)")
    for p in (pool, fmt):
        p.add_argument("--data", required=True, help="a generated ShapeWorld dataset")
        p.add_argument("--split", default="train")
        p.add_argument("--out", required=True)
        p.add_argument("--seed", type=int, default=0)
    fmt.add_argument("--isrt-config", required=True, help="the i-SRT config whose prompts to teach")
    fmt.add_argument("--n-judge", type=int, default=4000)
    fmt.add_argument("--n-revise", type=int, default=800)
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.command == "pool":
        records = pool_records(args.data, args.split, args.seed)
        out.write_text("".join(json.dumps(r) + "\n" for r in records))
        summary = {
            "records": len(records),
            "clips": len({r["scene_id"] for r in records}),
            "types": dict(Counter(r["truth"]["type"] for r in records)),
            "annotation_wrong": sum(r["annotation"] != r["truth"]["answer"] for r in records),
        }
    else:
        isrt = load_config(ISRTConfig, args.isrt_config)
        records, summary = format_records(
            args.data, isrt, args.split, n_judge=args.n_judge, n_revise=args.n_revise, seed=args.seed
        )
        out.write_text(json.dumps(records))
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
