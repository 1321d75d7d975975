"""i-SRT in the efficacy study: its row and the control matched to each of its runs.

i-SRT (Ahn et al., 2024, https://arxiv.org/abs/2406.11280; issue 17) aligns a video LMM with nothing
but its own judgments: per iteration the policy samples two answers per (video, question), writes
(or revises) a description of the clip, judges which answer is better, and DPO trains on the pairs
it did not call a tie (``train/isrt.py``). So its optimizer steps are known only after the run —
a fixed-budget control (``config.check_budget``) cannot be planned — and the control a user would
otherwise run is SFT on the same prompts answered by the training annotations, at DPO's step count
and batch (:func:`mmalign.eval.isrt_proof.control_records`, the proof's control). Both entries leave
``steps`` out; the control names the i-SRT entry in ``options.match`` and comes after it.

The commands, planned up front like every other row (argv fixed; what depends on the run is read
from files written after it):

1. once per study (shared by the seeds, like the Fact-RM): the label-free pool of the training
   clips, the judge/revise format records and the start model — the shipped model continued on
   those formats mixed with its own training annotations (``configs/isrt/judge_format.yaml``,
   ``options.format_steps``) — :func:`mmalign.eval.isrt_proof.prepare_commands` under
   ``<work>/isrt``. The tiny model never saw the judge prompt; a real LMM learned both formats
   from its instruction data. Its cost is not in a row's training cost (as for the Fact-RM);
2. per seed: ``train/isrt.py`` (``configs/isrt/tiny_shapeworld.yaml``; ``options``: ``iterations``,
   ``per_iteration`` prompts drawn per iteration by the seed, ``judge``, ``context``), DPO batch =
   the entry's ``batch`` (micro-batch × ranks);
3. ``python -m mmalign.eval.study.isrt final``: ``<run>/final`` → the last iterate (the start model
   when no iteration had pairs);
4. the matched control's ``python -m mmalign.eval.study.isrt control``: its data (one record per
   pair DPO trained on), its config (``configs/shapeworld/control.yaml`` with that data and the
   run's DPO steps) and ``budget.json`` (:func:`write_control`); with 0 steps its ``final`` is the
   start model itself;
5. the control's ``train/sft.py`` from the start model (skipped when 0 steps: ``final`` exists).

Before measuring, the runner refuses a control built from an i-SRT run that was redone since
(:func:`check_budget_current`); deleting the control's run folder rebuilds it.

Noisy regime only: i-SRT reads no annotation, and the start model and the control learn from the
training annotations as they are.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from mmalign.eval.isrt_proof import (
    ProofPlan,
    control_records,
    dpo_budget,
    isrt_command,
    iterate_model,
    prepare_commands,
)
from mmalign.eval.study.config import ISRT_OPTIONS, MethodEntry
from mmalign.eval.study.methods import CONTROL_CONFIG, Command, Context, Plan, run_dir

ROOT = Path(__file__).resolve().parents[3]
ISRT_CONFIG = "configs/isrt/tiny_shapeworld.yaml"
FORMAT_CONFIG = "configs/isrt/judge_format.yaml"


def proof_plan(ctx: Context, options: dict[str, Any]) -> ProofPlan:
    """The shared part (pool, format data, start model) under ``<work>/isrt`` with ``options``
    (checked at load: :func:`mmalign.eval.study.config.check_isrt_entry`)."""
    o = {**ISRT_OPTIONS, **options}
    return ProofPlan(
        data=ctx.train, out=ctx.work / "isrt", model=ctx.model, isrt_config=Path(ISRT_CONFIG),
        format_config=Path(FORMAT_CONFIG), iterations=int(o["iterations"]), per_iteration=int(o["per_iteration"]),
        modes=(str(o["context"]),), oracle=False, format_steps=int(o["format_steps"]), ranks=ctx.ranks,
    )  # fmt: skip


def matched_dir(ctx: Context, name: str, regime: str, seed: int) -> Path:
    """Where the matched control of i-SRT entry ``name``'s run gets its data, config and budget."""
    return ctx.work / "isrt" / "matched" / f"{name}-{regime}-s{seed}"


def _noisy_only(entry: MethodEntry, regime: str) -> None:
    if regime != "noisy":
        raise ValueError(
            f"method entry {entry.name!r}: i-SRT runs in the noisy regime only (regimes: [noisy]): it reads no "
            "annotation, so a clean row would repeat the noisy run; its start model and control learn from the "
            "training annotations as they are"
        )


def plan_isrt(ctx: Context, entry: MethodEntry, regime: str, seed: int) -> Plan:
    """The i-SRT row (module docstring, steps 1–3): shared start model, one run, its ``final`` link.

    Raises:
        ValueError: the clean regime.
    """
    _noisy_only(entry, regime)
    p = proof_plan(ctx, entry.options)
    judge, context = str({**ISRT_OPTIONS, **entry.options}["judge"]), p.modes[0]
    run = run_dir(ctx, entry.name, regime, seed)
    extra = (f"seed={seed}", f"strategy.micro_batch_size={entry.batch // ctx.ranks}", "strategy.grad_accum=1")
    final = Command(
        ("-m", "mmalign.eval.study.isrt", "final", "--run", str(run)), run / "final" / "mmalign.json",
        log=run.with_name(run.name + "-final.log"),
    )  # fmt: skip
    shared = [dataclasses.replace(c, run=None) for c in prepare_commands(p)]  # not in a row's cost
    cmds = [*shared, isrt_command(p, run, judge, context, run.with_suffix(".log"), extra), final]
    return Plan(
        entry.name,
        regime,
        seed,
        cmds,
        run / "final",
        matched_dir(ctx, entry.name, regime, seed) / "budget.json",
    )


def plan_matched_control(ctx: Context, entry: MethodEntry, regime: str, seed: int) -> Plan:
    """The control of i-SRT entry ``options.match`` (module docstring, steps 4–5): SFT from the same
    start model on that run's pairs' prompts with their training annotations, DPO's steps and batch.

    Raises:
        ValueError: the clean regime.
    """
    _noisy_only(entry, regime)
    target = str(entry.options["match"])
    inputs = matched_dir(ctx, target, regime, seed)
    start, out = ctx.work / "isrt" / "format" / "final", run_dir(ctx, entry.name, regime, seed)
    build = Command(
        ("-m", "mmalign.eval.study.isrt", "control", "--run", str(run_dir(ctx, target, regime, seed)),
         "--pool", str(ctx.work / "isrt" / "data" / "pool.jsonl"), "--media-root", str(ctx.train),
         "--out", str(inputs), "--control-run", str(out)),
        out / "budget.json", log=inputs.with_suffix(".log"),
    )  # fmt: skip
    train = Command(
        ("train/sft.py", "--config", str(inputs / "config.yaml"), f"model={start}", f"out={out}", f"seed={seed}",
         f"strategy.micro_batch_size={entry.batch // ctx.ranks}", "strategy.grad_accum=1", "save_every=0",
         "log_every=1"),
        out / "final" / "mmalign.json", ctx.ranks, out.with_suffix(".log"), out,
    )  # fmt: skip
    return Plan(entry.name, regime, seed, [build, train], out / "final", inputs / "budget.json")


def _link(link: Path, target: Path) -> None:
    """``link`` → ``target`` (absolute), replacing an older link (a rerun after a retrained run).

    Raises:
        FileExistsError: ``link`` is a real folder (a trained model: never replaced silently).
    """
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link} is a trained model, not a link; delete its run folder to rebuild it")
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(link.name + ".tmp")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(target.resolve(), tmp, target_is_directory=True)
    os.replace(tmp, link)


def finished_iterations(run: Path) -> int:
    """The iterations of a finished i-SRT run (its ``done.json``, written after the last row).

    Raises:
        FileNotFoundError: the run has not finished.
    """
    done = run / "done.json"
    if not done.exists():
        raise FileNotFoundError(f"{run} has not finished (no done.json)")
    return int(json.loads(done.read_text())["iterations"])


def link_final(run: Path) -> Path:
    """``<run>/final`` → the run's last iterate (:func:`mmalign.eval.isrt_proof.iterate_model`: the
    start model when no iteration had pairs); returns the target.

    Raises:
        FileNotFoundError: the run has not finished (no ``done.json``).
    """
    last = iterate_model(run, finished_iterations(run) - 1)
    _link(run / "final", last)
    return last


def run_digest(run: Path) -> str:
    """SHA-1 of a finished run's ``done.json`` and every ``iter_t/dpo.done`` (pairs, steps, model):
    what the matched control was built from.

    Raises:
        FileNotFoundError: the run has not finished.
    """
    iterations = finished_iterations(run)
    h = hashlib.sha1((run / "done.json").read_bytes())
    for t in range(iterations):
        h.update((run / f"iter_{t}" / "dpo.done").read_bytes())
    return h.hexdigest()


def write_control(run: Path, pool: Path, media_root: Path, out: Path, control_run: Path) -> dict[str, Any]:
    """The matched control's inputs in ``out``: ``data.json`` (one LLaVA record per pair DPO trained
    on in ``run``, its prompt with the pool's training annotation), ``config.yaml``
    (``configs/shapeworld/control.yaml`` with that data, ``max_steps`` = the run's DPO optimizer
    steps, the warm-up of the run's DPO) and ``budget.json`` (``steps``, ``pairs``, ``records``,
    ``start``, ``run`` and its :func:`run_digest`), also written last as ``<control_run>/budget.json``
    (the command's done marker: deleting the control's run folder rebuilds its inputs). With 0 steps
    ``<control_run>/final`` is linked to the start model (nothing to train: the control *is* its
    start). The same steps are not the same schedule: each i-SRT iteration's DPO starts a fresh
    AdamW with its own warm-up and cosine decay; the control has one over all its steps.

    Raises:
        FileNotFoundError: the run has not finished.
        KeyError: a pair's id is not in the pool.
        ValueError: the records are not one per pair.
        FileExistsError: 0 steps but ``<control_run>/final`` is a trained model (a stale control).
    """
    iterations = finished_iterations(run)
    run_cfg = yaml.safe_load((run / "isrt_config.yaml").read_text())
    records = control_records(run, pool, iterations)
    budget = {**dpo_budget(run, iterations), "records": len(records), "start": run_cfg["model"],
              "run": str(run), "digest": run_digest(run)}  # fmt: skip
    if budget["records"] != budget["pairs"]:
        raise ValueError(f"{run}: {budget['records']} control records for {budget['pairs']} pairs")
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.json").write_text(json.dumps(records))
    cfg = yaml.safe_load((ROOT / CONTROL_CONFIG).read_text())
    cfg.update(
        data=[{"path": str(out / "data.json"), "media_root": str(media_root)}], max_steps=budget["steps"]
    )
    cfg["optim"]["warmup_steps"] = run_cfg["optim"]["warmup_steps"]
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    if budget["steps"] == 0:
        _link(control_run / "final", Path(run_cfg["model"]))
    (out / "budget.json").write_text(json.dumps(budget))
    control_run.mkdir(parents=True, exist_ok=True)
    (control_run / "budget.json").write_text(json.dumps(budget))
    return budget


def check_budget_current(budget: Path) -> dict[str, Any]:
    """A matched row's ``budget.json``, refused when its i-SRT run changed since the control was
    built from it (a run deleted and redone: its pairs and steps may differ).

    Raises:
        ValueError: naming the run and what to delete.
    """
    b = json.loads(budget.read_text())
    if run_digest(Path(b["run"])) != b["digest"]:
        raise ValueError(
            f"{b['run']} changed after its matched control was built from it ({budget}); delete the control's "
            "run folder so that it is built again"
        )
    return b


def main(argv: list[str] | None = None) -> int:
    """``final --run R`` or ``control --run R --pool P --media-root D --out O --control-run C``."""
    parser = argparse.ArgumentParser(
        description="i-SRT study rows: link a run's final model; build its matched control"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("final").add_argument("--run", type=Path, required=True)
    control = sub.add_parser("control")
    for name in ("--run", "--pool", "--media-root", "--out", "--control-run"):
        control.add_argument(name, type=Path, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "final":
        print(f"{args.run}/final -> {link_final(args.run)}")
    else:
        budget = write_control(args.run, args.pool, args.media_root, args.out, args.control_run)
        print(f"matched control of {args.run}: {json.dumps(budget)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
