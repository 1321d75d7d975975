"""Runs the study: datasets, every row's commands (resumable), held-out measurement, training cost.

Launching follows ``scripts/quickstart.py``: ``python -m deepspeed.launcher.runner --num_gpus N
--master_port <free port>`` through this interpreter, ``OMP_NUM_THREADS=1``, ``DS_ACCELERATOR=cpu``
without CUDA. A command whose ``done`` path exists is skipped; measurements are cached per
checkpoint (:func:`mmalign.eval.rlhf_study.cache_key`), so a killed study resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmalign.eval.bars import BarLimits
from mmalign.eval.study.config import StudyConfig
from mmalign.eval.study.methods import Command, Context, Plan, plan

ROOT = Path(__file__).resolve().parents[3]


def generate_data(world: Path, out: Path, spec: Any) -> Path:
    """A ShapeWorld dataset (``python -m mmalign.shapeworld generate`` in-process; a rerun is a no-op)."""
    from mmalign.shapeworld import WorldConfig, generate

    fields = json.loads(world.read_text())
    cfg = WorldConfig.from_dict(fields.get("params", {}).get("config", fields))
    generate(
        out, spec.n_images, spec.n_videos, spec.seed, cfg,
        val_frac=spec.val_frac, test_frac=spec.test_frac,
        prior_per_group=spec.prior_per_group, progress=False,
    )  # fmt: skip
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux ``/proc``; empty elsewhere)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return out


def _hwm_gib(pid: int) -> float:
    """Peak resident set (``VmHWM``) of one process in GiB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def _run_watched(argv: list[str], env: dict, log: Path) -> tuple[int, dict[str, float]]:
    """Run ``argv``; returns its exit code and its cost seen from outside: ``wall_s`` (launch
    included), ``cpu_s`` (all descendants, ``RUSAGE_CHILDREN``) and ``peak_gib`` (largest process's
    ``VmHWM``, polled every 0.5 s)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start, peak = time.time(), 0.0
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            peak = max([peak, *(_hwm_gib(p) for p in _tree(proc.pid))])
            time.sleep(0.5)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc.returncode, {"wall_s": time.time() - start, "cpu_s": cpu, "peak_gib": peak}


def execute(cmd: Command) -> float:
    """Run one command (skipped when ``cmd.done`` exists); returns its wall seconds (0 when skipped).

    A training command's outside view of its cost is written to ``<run>/study_cost.json``.

    The command line is kept beside its log (``<log>.argv.json``): a finished command is reused only
    when it was run with the same arguments (steps, batch, data, options…); one made with others
    is refused rather than reported under the new config (an older output without the file is
    adopted as it is).

    Raises:
        RuntimeError: it failed (the message names its log).
        ValueError: its output exists but was made by a different command.
    """
    log = cmd.log or cmd.done.parent / "command.log"
    stamp = log.with_name(log.name + ".argv.json")
    if cmd.done.exists():
        if stamp.exists() and json.loads(stamp.read_text()) != list(cmd.argv):
            raise ValueError(
                f"{cmd.done} was made by another command than this config's (see {stamp}); "
                "delete it or choose another --out"
            )
        if not stamp.exists():
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.write_text(json.dumps(list(cmd.argv)))
        return 0.0
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    if cmd.ranks:
        if "DS_ACCELERATOR" not in env:
            import torch

            if not torch.cuda.is_available():
                env["DS_ACCELERATOR"] = "cpu"
        head = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(cmd.ranks),
                "--master_port", str(_free_port())]  # fmt: skip
        argv = [*head, str(ROOT / cmd.argv[0]), *cmd.argv[1:]]
    elif cmd.argv[0] == "-m":
        argv = [sys.executable, *cmd.argv]
    else:
        argv = [sys.executable, str(ROOT / cmd.argv[0]), *cmd.argv[1:]]
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {' '.join(argv)}  > {log}", flush=True)
    rc, cost = _run_watched(argv, env, log)
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"command failed (exit {rc}), see {log}:\n{tail}")
    stamp.write_text(json.dumps(list(cmd.argv)))
    if cmd.run is not None:
        (cmd.run / "study_cost.json").write_text(json.dumps(cost))
    return cost["wall_s"]


def measure_checkpoint(
    folder: Path,
    data: Path,
    limits: BarLimits,
    cache: Path,
    wordings: Sequence[str] = ("natural", "terse"),
    n_mmhal: int = 0,
) -> dict[str, dict[str, Any]]:
    """Held-out measurement of one checkpoint in each of ``wordings``, cached: ``{wording: result}``.

    ``mmalign.eval.bars.measure_wordings`` (the captions generated once, the questions asked in
    each wording; CHAIR-i and CHAIR-s of its caption pass) plus, added to every wording's result
    since it does not depend on it, with ``n_mmhal`` > 0, the MMHal-style exact rating (0–6)
    of greedy answers to that many ShapeWorld MMHal records (``mmalign.eval.mmhal.shapeworld_records``,
    ``exact_rating``): ``mmhal`` (average) and ``mmhal_hallucination_rate`` (share rated < 3).
    """
    from mmalign.data.processor import MultimodalProcessor
    from mmalign.eval import bars
    from mmalign.eval.rlhf_study import cache_key
    from mmalign.models.checkpoint import load_model

    eval_world = (
        json.loads((data / "world.json").read_text()).get("params")
        if (data / "world.json").exists()
        else None
    )
    key = {
        **cache_key(folder, data, limits),
        "eval_params": eval_world,  # a regenerated held-out set is measured again
        "wordings": list(wordings),
        "n_mmhal": n_mmhal,
    }
    if cache.exists():
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            return stored["measured"]
    start = time.time()
    model, tokenizer = load_model(str(folder))
    model.eval()
    processor = MultimodalProcessor.for_model(model, tokenizer)
    measured = bars.measure_wordings(model, processor, str(data), limits, wordings=tuple(wordings))
    shared: dict[str, Any] = {"n": {}}
    if n_mmhal > 0:
        from mmalign.eval.common import GenerationOptions
        from mmalign.eval.mmhal import run_mmhal, shapeworld_records

        gen = GenerationOptions(batch_size=limits.batch_size, max_new_tokens=64)
        rated = run_mmhal(model, processor, shapeworld_records(data, "test", n=n_mmhal), gen)
        shared["mmhal"] = rated["average"]
        shared["mmhal_hallucination_rate"] = rated["hallucination_rate"]
        shared["n"]["mmhal"] = rated["n"]
    shared["measure_s"] = time.time() - start
    for result in measured.values():
        result.update({k: v for k, v in shared.items() if k != "n"})
        result.setdefault("n", {}).update(shared["n"])
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "measured": measured}, default=str))
    return measured


def training_cost(runs: list[Path]) -> dict[str, Any]:
    """Cost of a row's training runs (stages added up; peaks = the largest), the same way for every row.

    From each trainer's own ``metrics.jsonl`` (SFT, DPO, reward and RL loops all log
    ``memory/peak_gib``, ``memory/peak_above_start_gib`` and ``cpu_s`` at each log step):
    ``train_wall_s`` (the loop's clock ``time``), ``train_cpu_s`` (CPU seconds of all ranks), both
    added over restarts (:func:`mmalign.eval.rl_compare.across_restarts`), ``peak_gib`` (the
    largest rank's peak) and ``peak_above_start_gib``. ``launch_wall_s`` is the runner's outside
    view of each subprocess (``study_cost.json``: launcher, loading and saving included), which
    is also the fallback for CPU and peak memory of a run without a top-level ``metrics.jsonl``
    (an i-SRT run logs per stage) or logged before the trainers measured them; a matched control
    with 0 steps ran nothing (all NaN). RL runs also get :func:`mmalign.eval.rl_compare.run_cost` under ``rl``.
    """
    from mmalign.eval.plots import read_metrics
    from mmalign.eval.rl_compare import across_restarts, run_cost

    keys = ("train_wall_s", "launch_wall_s", "train_cpu_s", "peak_gib", "peak_above_start_gib")
    if not runs:  # the SFT model: no training in the study
        return dict.fromkeys(keys, float("nan"))
    total: dict[str, Any] = dict.fromkeys(keys, 0.0)
    nan = float("nan")
    for run in runs:
        outside = (
            json.loads((run / "study_cost.json").read_text()) if (run / "study_cost.json").exists() else {}
        )
        # none: an i-SRT run (its sampling and judging are in study_cost.json) or a 0-step control
        records = read_metrics(run) if (run / "metrics.jsonl").exists() else []

        def logged(key: str, records: list[dict] = records) -> list[float]:
            return [r[key] for r in records if key in r]

        times, cpu = logged("time"), logged("cpu_s")
        peaks, above = logged("memory/peak_gib"), logged("memory/peak_above_start_gib")
        total["train_wall_s"] += across_restarts(times) if times else nan
        total["launch_wall_s"] += outside.get("wall_s", nan)
        total["train_cpu_s"] += across_restarts(cpu) if cpu else outside.get("cpu_s", nan)
        for key, peak in (
            ("peak_gib", max(peaks) if peaks else outside.get("peak_gib", nan)),
            ("peak_above_start_gib", max(above) if above else nan),
        ):
            total[key] = max(total[key], peak) if not math.isnan(peak) else nan  # NaN stays NaN
        if not (run / "config.yaml").exists() or not records:  # i-SRT, a 0-step control: not RL
            continue
        try:
            total["rl"] = run_cost(run)
        except (ValueError, KeyError):
            pass
    return total


def plans(cfg: StudyConfig, ctx: Context) -> list[Plan]:
    """Every row of the study (entries × regimes × seeds; the SFT row once), checked before any run.

    A command shared by rows (a builder, a reward model built once per study) runs once, for the
    first row that plans it; rows that plan the same ``done`` path must plan the same command.

    Raises:
        ValueError: a row cannot be planned, or two rows plan different commands with one ``done``
            path (e.g. two ``reward_model: build`` entries with different ``rm_steps``).
    """
    out = []
    for entry in cfg.methods:
        if not entry.seeded:
            out.append(plan(ctx, entry, "both", -1))
            continue
        for regime in entry.regimes:
            out += [plan(ctx, entry, regime, seed) for seed in cfg.seeds]
    first: dict[Path, tuple[Plan, Command]] = {}
    for p in out:
        for c in p.commands:
            q, d = first.setdefault(c.done, (p, c))
            if d.argv != c.argv:
                raise ValueError(
                    f"{c.done} is planned by {q.entry} ({q.regime}, seed {q.seed}) and by {p.entry} "
                    f"({p.regime}, seed {p.seed}) with different arguments; give them the same options"
                )
    return out


def run_study(cfg: StudyConfig, root: Path = ROOT) -> dict[str, Any]:
    """Generate data, run every command, measure every row; returns ``results`` (see ``report``).

    Raises:
        FileNotFoundError: the SFT model is missing.
        RuntimeError: a command failed.
    """
    started = time.time()
    out = (root / cfg.out).resolve()
    model = (root / cfg.model).resolve()
    if not (model / "mmalign.json").exists():
        raise FileNotFoundError(f"the SFT model {model} is not an mmalign checkpoint")
    world = root / cfg.world
    train = (root / cfg.train_dir).resolve() if cfg.train_dir else out / "data" / "train"
    if not (cfg.train_dir and (train / "world.json").exists()):  # a given dataset is used as it is
        generate_data(world, train, cfg.train)
    held_out = generate_data(world, out / "data" / "eval", cfg.eval)
    ctx = Context(model, train, out / "work", out / "runs", cfg.ranks)
    rows = plans(cfg, ctx)
    done: set[Path] = set()
    for p in rows:
        for c in p.commands:
            if c.done in done:
                continue
            execute(c)
            done.add(c.done)
    budgets: dict[Path, dict[str, Any]] = {}  # matched rows' budgets; one built from a redone run is refused
    for p in rows:
        if p.budget is not None and p.budget not in budgets:
            from mmalign.eval.study.isrt import check_budget_current

            budgets[p.budget] = check_budget_current(p.budget)
    limits = BarLimits(cfg.limits.n_images, cfg.limits.n_videos, cfg.limits.n_prior, cfg.limits.batch_size)
    results: list[dict[str, Any]] = []
    # rows that are one checkpoint (an i-SRT run without pairs and its 0-step control link to their
    # start model) are measured once
    by_folder: dict[Path, dict[str, dict[str, Any]]] = {}
    for p in rows:
        tag = f"{p.entry}-{p.regime}-s{p.seed}" if p.seed >= 0 else p.entry
        assert p.final is not None
        folder = p.final.resolve()
        if folder not in by_folder:
            by_folder[folder] = measure_checkpoint(
                p.final, held_out, limits, out / "measured" / f"{tag}.json", cfg.wordings, cfg.limits.n_mmhal
            )
        by_wording = by_folder[folder]
        entry = cfg.entry(p.entry)
        budget = budgets.get(p.budget) if p.budget is not None else None
        results.append(
            {
                "entry": p.entry, "method": entry.method, "regime": p.regime, "seed": p.seed,
                "control": entry.control, "steps": budget["steps"] if budget else entry.steps, "batch": entry.batch,
                "subset": entry.options.get("subset"), "corpus": entry.options.get("corpus", entry.examples),
                "checkpoint": str(p.final), "wording": cfg.wordings[0], "measured": by_wording[cfg.wordings[0]],
                "measured_wordings": by_wording, "cost": training_cost(p.runs), "budget": budget,
            }
        )  # fmt: skip
        print(f"{tag}: measured", file=sys.stderr, flush=True)
    return {
        "config": cfg.out,
        "seeds": cfg.seeds,
        "wordings": list(cfg.wordings),
        "rows": results,
        "train_data": str(train),
        "eval_data": str(held_out),
        "wall_s": time.time() - started,
    }
