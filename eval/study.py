"""The efficacy study (issue 18): every alignment method from the shipped SFT model against the
same-budget SFT continuation a user would otherwise run, in a noisy and a clean data regime.

    python eval/study.py --config configs/study/shapeworld.yaml            # the study (≥ 3 seeds)
    python eval/study.py --config configs/study/shapeworld.yaml --quick    # a small version (1 seed; what make quickstart shows)
    python eval/study.py --config configs/study/shapeworld.yaml --quick --out runs/study_quick
    python eval/study.py --config configs/study/shapeworld.yaml --plan     # print the commands only

Writes ``<out>/report.md`` (a markdown table per regime: mean ± std over seeds, ✓ where a row beats
its control, the issue's targets judged, wall time), ``<out>/results.json`` (every run's held-out
measurement and training cost) and one PNG bar chart per metric under ``<out>/charts/``
(default ``out``: the config's, ``runs/study-full``; the quickstart's quick study writes ``runs/study``). Training runs are subprocesses of ``train/*.py`` under DeepSpeed
(2 CPU ranks), kept under ``<out>/runs``; a finished run (``final/`` exists) is skipped, so a
killed study resumes. Every model is measured in both question wordings (natural, as users and
POPE ask, in the tables; terse kept in ``results.json``). The logic is :mod:`mmalign.eval.study`.
"""

from __future__ import annotations

import argparse
import sys

from mmalign.config import ConfigError
from mmalign.eval.study.config import load_study
from mmalign.eval.study.methods import Context
from mmalign.eval.study.report import write_study
from mmalign.eval.study.runner import ROOT, plans, run_study


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="issue 18's efficacy study on ShapeWorld")
    parser.add_argument("--config", required=True, help="a study config (configs/study/shapeworld.yaml)")
    parser.add_argument(
        "--quick", action="store_true", help="the config's quick section: one seed, few steps"
    )
    parser.add_argument("--out", help="output folder (default: the config's out)")
    parser.add_argument(
        "--train-data",
        help="the training dataset folder (default: the config's train_dir, else <out>/data/train); "
        "generated there from the config's train section when missing",
    )
    parser.add_argument("--plan", action="store_true", help="print every command and exit")
    args = parser.parse_args(argv)
    try:
        cfg = load_study(args.config, quick=args.quick, out=args.out, train_dir=args.train_data)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    out = (ROOT / cfg.out).resolve()
    if args.plan:
        train = (ROOT / cfg.train_dir).resolve() if cfg.train_dir else out / "data" / "train"
        ctx = Context(ROOT / cfg.model, train, out / "work", out / "runs", cfg.ranks)
        try:
            rows = plans(cfg, ctx)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from exc
        for p in rows:
            print(f"# {p.entry} {p.regime} seed {p.seed} → {p.final}")
            for c in p.commands:
                print(("deepspeed " if c.ranks else "python ") + " ".join(c.argv))
        return 0
    try:
        results = run_study(cfg)
    except (ValueError, OSError) as exc:  # OSError: e.g. a folder holding another dataset
        raise SystemExit(f"error: {exc}") from exc
    print(write_study(results, out))
    print(f"report: {out / 'report.md'}; results: {out / 'results.json'}; charts: {out / 'charts'}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
