"""The i-SRT proof on ShapeWorld videos: ≥ 3 iterations per context mode, the same-budget control,
held-out video hallucination per iterate, the issue's targets judged.

Launch (2 CPU ranks; resumable — a finished command is skipped, a measurement is cached)::

    python eval/isrt_proof.py --data runs/shapeworld --out runs/isrt-proof
    python eval/isrt_proof.py --data runs/shapeworld --out runs/isrt-smoke --smoke   # minutes, smoke size

Steps (``mmalign.eval.isrt_proof``):

1. the label-free prompt pool of the training clips and the judge/revise format records, from the
   training annotations as they are (``data_builders/shapeworld_isrt.py``);
2. the start model: the shipped model continued on those formats (``configs/isrt/judge_format.yaml``);
   the tiny model cannot otherwise read the judge prompt;
3. i-SRT (``train/isrt.py``, ``configs/isrt/tiny_shapeworld.yaml``, self judge) once per context
   mode ``retrospective | fresh | none``, and once with the exact judge and retrospective context
   (``oracle``: what the loop does when the judge is right), ``--iterations`` each;
4. a control for the retrospective and the oracle run: SFT continued from the start model on the
   same prompts as that run's pairs, answered by the training annotations (noise included), with
   DPO's optimizer steps and micro-batch (``configs/shapeworld/control.yaml``'s optimizer);
5. held-out measurement (``mmalign.eval.video_hallucination.measure_video``: test clips and the
   video prior probes) of the shipped SFT model, the start model, every iterate of the
   retrospective run, the last iterate of the other runs and the controls;
6. ``report.md``, ``results.json`` and ``iterations.png`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmalign.eval.isrt_proof import (  # noqa: E402
    ProofPlan,
    control_command,
    control_records,
    dpo_budget,
    format_report,
    iterate_model,
    iteration_rows,
    judge_targets,
    plan_commands,
)  # fmt: skip
from mmalign.eval.study.runner import execute  # noqa: E402


def measure(folder: Path, data: Path, cache: Path, n_clips: int, n_prior: int) -> dict:
    """Held-out video measurement of one checkpoint, cached by (folder, its weights' mtime, sizes)."""
    weights = sorted(folder.glob("*.safetensors"))
    key = {"folder": str(folder), "mtime": [w.stat().st_mtime for w in weights], "data": str(data),
           "n_clips": n_clips, "n_prior": n_prior}  # fmt: skip
    if cache.exists() and (stored := json.loads(cache.read_text())).get("key") == key:
        return stored["measured"]
    from mmalign.data.processor import MultimodalProcessor
    from mmalign.eval.video_hallucination import measure_video
    from mmalign.models.checkpoint import load_model

    model, tokenizer = load_model(str(folder))
    model.eval()
    measured = measure_video(model, MultimodalProcessor.for_model(model, tokenizer), data, n_clips, n_prior)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "measured": measured}))
    print(f"measured {folder}: prior yes {measured['prior/yes']:.3f}, CHAIR-i {measured['desc/chair_i']:.3f}, "
          f"QA {measured['qa/accuracy']:.3f}", flush=True)  # fmt: skip
    return measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="runs/shapeworld", help="the ShapeWorld dataset (video noise on)")
    parser.add_argument("--out", default="runs/isrt-proof")
    parser.add_argument("--model", default="checkpoints/tiny-shapeworld", help="the shipped SFT model")
    parser.add_argument("--isrt-config", default="configs/isrt/tiny_shapeworld.yaml")
    parser.add_argument("--format-config", default="configs/isrt/judge_format.yaml")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--per-iteration", type=int, default=192, help="prompts drawn per iteration")
    parser.add_argument("--modes", default="retrospective,fresh,none")
    parser.add_argument("--format-steps", type=int, default=300)
    parser.add_argument("--n-clips", type=int, default=100, help="held-out test clips")
    parser.add_argument("--n-prior", type=int, default=100, help="held-out prior probes per group")
    parser.add_argument("--no-oracle", action="store_true", help="skip the exact-judge run (upper bound)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, oracle judge (so that DPO and the control get pairs): a check that everything runs",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.iterations, args.per_iteration, args.format_steps, args.n_clips, args.n_prior = 1, 16, 4, 8, 4
        args.modes = "retrospective"
    data, out = (ROOT / args.data).resolve(), (ROOT / args.out).resolve()
    plan = ProofPlan(
        data=data, out=out, model=(ROOT / args.model).resolve(), isrt_config=ROOT / args.isrt_config,
        format_config=ROOT / args.format_config, iterations=args.iterations, per_iteration=args.per_iteration,
        modes=tuple(args.modes.split(",")), oracle=not args.no_oracle, format_steps=args.format_steps,
        extra=("context_max_new_tokens=16", "max_new_tokens=8", "judge=oracle", "temperature=2.0") if args.smoke else (),
    )  # fmt: skip
    if plan.modes[0] != "retrospective":
        parser.error("--modes must start with retrospective (the main run: the control's budget)")

    # 1-3: data, the format continuation, one i-SRT run per context mode
    for cmd in plan_commands(plan):
        execute(cmd)

    # 4: the controls — a run's pairs' prompts with their training annotations, DPO's steps
    budgets, controls = {}, {}
    for name in plan.controlled:
        records = control_records(plan.run(name), out / "data" / "pool.jsonl", plan.iterations)
        budgets[name] = {**dpo_budget(plan.run(name), plan.iterations), "records": len(records)}
        if not records:
            print(f"no control for {name}: the run made no pairs (DPO never stepped)", flush=True)
            continue
        data_file = out / "data" / f"control-{name}.json"
        data_file.write_text(json.dumps(records))
        cmd = control_command(plan, name, data_file, budgets[name]["steps"])
        execute(cmd)
        controls[f"control ({name})"] = cmd.done

    # 5: held-out measurement
    main_run = plan.run(plan.modes[0])
    models = {"sft": plan.model, "start": plan.start}
    for t in range(plan.iterations):
        models[f"retro t{t + 1}"] = iterate_model(main_run, t)
    for name in list(plan.runs)[1:]:
        models[f"{name} t{plan.iterations}"] = iterate_model(plan.run(name), plan.iterations - 1)
    models.update(controls)
    measured, by_folder = {}, {}  # an iterate without pairs is its start model: measured once
    for name, folder in models.items():
        folder = (folder if folder.is_absolute() else ROOT / folder).resolve()
        if folder not in by_folder:
            cache = out / "measured" / (name.replace(" ", "_").replace("(", "").replace(")", "") + ".json")
            by_folder[folder] = measure(folder, data, cache, args.n_clips, args.n_prior)
        measured[name] = by_folder[folder]

    # 6: report
    rows = {name: iteration_rows(plan.run(name), data) for name in plan.runs}
    last = f"retro t{plan.iterations}"
    targets = judge_targets(rows, measured, last)
    notes = [
        f"Pool: {args.per_iteration} label-free prompts per iteration from `{args.data}` train clips; "
        f"{plan.iterations} iterations per mode; held-out: {args.n_clips} test clips, {args.n_prior} + "
        f"{args.n_prior} video prior probes. Controls (a run's pairs' prompts with their training "
        f"annotations, DPO's optimizer steps): {json.dumps(budgets)}.",
        "Start model = the shipped SFT model + the judge/revise format continuation "
        "(`configs/isrt/judge_format.yaml`); targets compare the last iterate with it.",
    ]
    (out / "report.md").write_text(format_report(rows, measured, targets, notes))
    (out / "results.json").write_text(json.dumps(
        {"rows": rows, "measured": measured, "targets": targets, "control_budgets": budgets}, indent=1, default=str
    ))  # fmt: skip
    _plot(rows, measured, plan, out / "iterations.png")
    print((out / "report.md").read_text())
    return 0


def _plot(rows: dict, measured: dict, plan: ProofPlan, path: Path) -> None:
    """Judge agreement per mode and the held-out hallucination of the retrospective iterates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for mode, mode_rows in rows.items():
        axes[0].plot(
            [r["iteration"] for r in mode_rows], [r["margin_agreement"] for r in mode_rows], "o-", label=mode
        )
    axes[0].axhline(0.5, color="gray", ls=":")
    axes[0].set(title="judge agreement with the oracle (mean margin)", xlabel="iteration")
    axes[0].legend()
    names = ["start"] + [f"retro t{t + 1}" for t in range(plan.iterations)]
    names = [n for n in names if n in measured]
    for key, ax in (("prior/yes", axes[1]), ("desc/chair_i", axes[2])):
        ax.plot(range(len(names)), [measured[n][key] for n in names], "o-", label="i-SRT (retrospective)")
        if "control (retrospective)" in measured:
            ax.axhline(measured["control (retrospective)"][key], color="gray", ls="--", label="control")
        ax.set(title=f"held-out {key}", xticks=range(len(names)))
        ax.set_xticklabels(names, fontsize=7)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
