"""RL estimators side by side on ShapeWorld (the critic-free RL proof): held-out hallucination and
QA of each run's policy, the cost of each run, and the targets judged.

The runs (data, reward model and control: the README's Fact-RLHF study), every one 40 iterations
of 64 generated responses from the shipped SFT model, with the exact judge as a verifiable reward
(``reward_model=null`` + the judge function) or with the Fact-RM (the config's default)::

    PPO="DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 deepspeed --num_gpus 2 train/ppo.py --config configs/ppo/tiny_shapeworld.yaml"
    JUDGE='reward_model=null reward_functions=[{spec: "mmalign.rl.reward_fns:shapeworld_judge"}]'
    REMAX="preset=remax rollout_batch_size=32 strategy.micro_batch_size=8"   # 32 sampled + 32 greedy
    RLOO="preset=rloo num_samples=4 rollout_batch_size=16 strategy.micro_batch_size=4"
    GRPO="preset=grpo num_samples=4 rollout_batch_size=16 strategy.micro_batch_size=4"
    $PPO out=runs/rl/ppo_judge $JUDGE;      $PPO out=runs/rl/ppo_fact
    $PPO out=runs/rl/remax_judge $REMAX $JUDGE; $PPO out=runs/rl/remax_fact $REMAX
    $PPO out=runs/rl/rloo_judge $RLOO $JUDGE;   $PPO out=runs/rl/rloo_fact $RLOO
    $PPO out=runs/rl/grpo_judge $GRPO $JUDGE;   $PPO out=runs/rl/grpo_fact $GRPO

(``scripts/rl_study.sh`` runs them in this order, each item of ``JUDGE`` one argument). Then:

    python eval/rl_compare.py --data runs/rlhf_world --out runs/rl/compare \
        --model sft=checkpoints/tiny-shapeworld --model control=runs/rlhf_control/final \
        --run ppo_judge=runs/rl/ppo_judge --run remax_judge=runs/rl/remax_judge \
        --run rloo_judge=runs/rl/rloo_judge --run grpo_judge=runs/rl/grpo_judge \
        --run ppo_rm=runs/rl/ppo_fact --run remax_rm=runs/rl/remax_fact \
        --run rloo_rm=runs/rl/rloo_fact --run grpo_rm=runs/rl/grpo_fact \
        --prompts runs/rlhf_world/ppo_prompts/train.jsonl

Each ``--run NAME=RUN_DIR`` is a ``train/ppo.py`` output folder: its policy is ``RUN_DIR/final``,
its cost comes from ``metrics.jsonl`` (:func:`mmalign.eval.rl_compare.run_cost`). The first two
``--model`` are the SFT start and the same-budget SFT control. Held-out: the dataset's test split
and prior probes, greedy decoding, exact judges (as ``eval/fact_rlhf.py``; measurements cached in
``<out>/measured/``). Writes ``<out>/table.md``, ``<out>/results.json`` and, with ``--prompts``,
``<out>/judged_over_training.png`` (the exact judge of rank 0's logged samples per iteration).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmalign.eval.bars import BarLimits
from mmalign.eval.common import parse_model_specs
from mmalign.eval.rl_compare import estimator_targets, format_costs, run_cost
from mmalign.eval.rlhf_study import format_study, judged_curve, measure_models, plot_curves, study_row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="RL estimators on ShapeWorld: held-out table, costs, targets"
    )
    parser.add_argument("--data", required=True, help="the study's ShapeWorld dataset")
    parser.add_argument(
        "--model", action="append", required=True, help="NAME=DIR: the SFT model, then the control"
    )
    parser.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR of a train/ppo.py run")
    parser.add_argument("--prompts", help="the RL prompt file (for the judged curves)")
    parser.add_argument("--n-images", type=int, default=200)
    parser.add_argument("--n-prior", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    baselines = parse_model_specs(args.model)
    if len(baselines) != 2:
        raise SystemExit("error: give exactly two --model: the SFT model, then the control")
    runs = parse_model_specs(args.run)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    costs = {name: run_cost(folder) for name, folder in runs}  # fails before any measuring
    models = baselines + [(name, str(Path(folder) / "final")) for name, folder in runs]
    limits = BarLimits(args.n_images, 0, args.n_prior, args.batch_size)
    measured = measure_models(models, args.data, limits, out / "measured")
    rows = {name: study_row(measured[name]) for name, _ in models}

    sft = baselines[0][0]
    verdicts = {name: estimator_targets(rows, costs, sft, name) for name, _ in runs}
    lines = [format_study(rows), "", format_costs(costs), ""]
    for name, verdict in verdicts.items():
        if verdict:
            lines.append(
                f"{name}: " + "; ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in verdict.items())
            )
    curves = {}
    if args.prompts:
        curves = {name: judged_curve(folder, args.prompts, args.data) for name, folder in runs}
        plot_curves(curves, out / "judged_over_training.png")
    text = "\n".join(lines)
    print(text)
    (out / "table.md").write_text(text + "\n")
    payload = {"rows": rows, "costs": costs, "targets": verdicts, "curves": curves, "measured": measured}
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
