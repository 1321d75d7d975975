"""The Fact-RLHF proof on ShapeWorld: a held-out table of SFT | control | PPO runs, the issue's
targets judged, and the reward model's score beside the exact judge over training.

    python eval/fact_rlhf.py --data runs/rlhf_world \
        --model sft=checkpoints/tiny-shapeworld --model control=runs/rlhf_control/final \
        --model ppo_plain=runs/ppo_plain/final --model ppo_fact=runs/ppo_fact/final \
        --run ppo_plain=runs/ppo_plain --run ppo_fact=runs/ppo_fact \
        --prompts runs/rlhf_world/ppo_prompts/train.jsonl --out runs/fact_rlhf

Held-out: the dataset's test split (clear scenes) and its ``prior/test.jsonl`` probes (violating
and control scenes), greedy decoding, exact judges (:mod:`mmalign.eval.bars`). Writes
``<out>/table.md``, ``<out>/results.json`` and ``<out>/reward_vs_judge.png`` (from each run's
``samples.jsonl``); each model's measurement is kept in ``<out>/measured/<name>.json`` and reused
by a rerun with the same checkpoint, data and limits. The first model is the SFT model, the second the control; targets are judged
for every later model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmalign.eval.bars import BarLimits
from mmalign.eval.common import parse_model_specs
from mmalign.eval.rlhf_study import (
    format_study,
    judged_curve,
    measure_models,
    plot_curves,
    study_row,
    targets,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fact-RLHF on ShapeWorld: held-out table and curves")
    parser.add_argument("--data", required=True, help="the study's ShapeWorld dataset")
    parser.add_argument("--model", action="append", required=True, help="NAME=DIR: sft first, control second")
    parser.add_argument(
        "--run", action="append", default=[], help="NAME=RUN_DIR of a PPO run (samples.jsonl)"
    )
    parser.add_argument("--prompts", help="the PPO prompt file (for the judged curves)")
    parser.add_argument("--n-images", type=int, default=200)
    parser.add_argument("--n-prior", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    models = parse_model_specs(args.model)
    if len(models) < 3:
        raise SystemExit("error: give the SFT model, the control and at least one method (--model NAME=DIR)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    limits = BarLimits(args.n_images, 0, args.n_prior, args.batch_size)
    measured = measure_models(models, args.data, limits, out / "measured")
    rows = {name: study_row(measured[name]) for name, _ in models}
    table = format_study(rows)
    sft, control = models[0][0], models[1][0]
    verdicts = {name: targets(rows, sft, control, name) for name, _ in models[2:]}
    lines = [table, ""]
    for name, verdict in verdicts.items():
        lines.append(f"{name}: " + "; ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in verdict.items()))
    curves = {}
    if args.run:
        if not args.prompts:
            raise SystemExit("error: --run needs --prompts (the PPO prompt file)")
        for name, run in parse_model_specs(args.run):
            curves[name] = judged_curve(run, args.prompts, args.data)
        plot_curves(curves, out / "reward_vs_judge.png")
        for name, curve in curves.items():
            first, last = curve[0], curve[-1]
            lines.append(
                f"{name} over training (first → last iteration): RM score {first['rm']:.3f} → {last['rm']:.3f}; "
                f"judge: existence accuracy {first['existence_acc']:.3f} → {last['existence_acc']:.3f}, "
                f"false yes (violating) {first['false_yes_violating']:.3f} → {last['false_yes_violating']:.3f}, "
                f"hallucinated objects per caption {first['hallucinated_per_caption']:.3f} → "
                f"{last['hallucinated_per_caption']:.3f}"
            )
    text = "\n".join(lines)
    print(text)
    (out / "table.md").write_text(text + "\n")
    payload = {"rows": rows, "targets": verdicts, "curves": curves, "measured": measured}
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
