"""Comparing RL estimators on ShapeWorld: each run's cost read from its ``metrics.jsonl`` and the
critic-free RL issue's targets judged on the held-out rows of :mod:`mmalign.eval.rlhf_study`.

* :func:`run_cost` — one run of ``train/ppo.py``: its estimator and reward (from ``config.yaml``),
  responses and tokens generated, mean response length over training, peak memory, CPU seconds
  and wall time.
* :func:`format_costs` — those as a markdown table (one column per run).
* :func:`estimator_targets` — with the verifiable reward every estimator removes ≥ 90 % of the
  SFT model's prior-driven false "yes" with clear QA down ≤ 1 point; ReMax matches PPO (same
  reward) at ≤ 0.6× its peak memory (the memory above what each process held before loading a
  model: on a tiny model the interpreter and libraries would otherwise hide the difference).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

COSTS = (
    ("estimator", "estimator"),
    ("reward", "reward"),
    ("iterations", "iterations"),
    ("responses", "responses generated (all ranks)"),
    ("generated_tokens", "tokens generated (all ranks)"),
    ("response_length", "mean response length over training (tokens)"),
    ("peak_gib", "peak memory, largest rank (GiB)"),
    ("peak_above_start_gib", "  of which above the process before loading models (GiB)"),
    ("cpu_s", "CPU time, all ranks (s)"),
    ("wall_s", "wall time (s)"),
)


def _reward_kind(cfg: Mapping[str, Any]) -> str:
    parts = []
    if cfg.get("reward_model"):
        parts.append("rm")
    for fn in cfg.get("reward_functions") or []:
        parts.append(
            "judge" if str(fn.get("spec", "")).endswith(":shapeworld_judge") else str(fn.get("spec"))
        )
    return "+".join(parts) or "none"


def across_restarts(values: list[float]) -> float:
    """The total of a per-process counter (``cpu_s``, ``time``) over a run that was resumed: it
    restarts from the new process's start, so each process's last value is added up (a drop
    marks a restart)."""
    total = 0.0
    for prev, cur in zip(values, values[1:], strict=False):
        if cur < prev:
            total += prev
    return total + values[-1]


def run_cost(run: str | Path) -> dict[str, Any]:
    """The cost of one RL run, from its folder.

    Args:
        run: a ``train/ppo.py`` output folder (``config.yaml``, ``metrics.jsonl`` logged every
            iteration with ``rollout/generated_tokens``, ``memory/peak_gib``, ``cpu_s``, ``time``).

    Returns:
        ``estimator``, ``reward`` (``rm``, ``judge`` or both joined by ``+``), ``iterations``,
        ``responses`` (sampled plus ReMax's greedy ones), ``generated_tokens``,
        ``response_length`` (mean over iterations of the sampled responses' mean length),
        ``peak_gib`` and ``peak_above_start_gib`` (maxima over the log), ``cpu_s`` and ``wall_s``
        (at the last iteration, plus each earlier process's last value when the run was resumed:
        both counters restart with the process).

    Raises:
        FileNotFoundError: the folder lacks ``config.yaml`` or ``metrics.jsonl``.
        ValueError: the metrics lack the cost fields (a run logged before they existed) or are
            not one record per iteration.
    """
    run = Path(run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    needed = (
        "rollout/generated_tokens", "memory/peak_gib", "memory/peak_above_start_gib", "cpu_s", "time",
        "response/length",
    )  # fmt: skip
    missing = [k for k in needed if not records or k not in records[-1]]
    if missing:
        raise ValueError(
            f"{run / 'metrics.jsonl'}: no {', '.join(missing)} (log_every must be 1 and the run recent)"
        )
    steps = [r["step"] for r in records]
    if steps != list(range(1, len(records) + 1)):
        raise ValueError(f"{run / 'metrics.jsonl'}: cost needs one record per iteration (log_every: 1)")
    per_iteration = cfg["rollout_batch_size"] * cfg["num_samples"] * (2 if cfg["estimator"] == "remax" else 1)
    return {
        "estimator": cfg["estimator"],
        "reward": _reward_kind(cfg),
        "iterations": len(records),
        "responses": per_iteration * len(records),
        "generated_tokens": sum(r["rollout/generated_tokens"] for r in records),
        "response_length": sum(r["response/length"] for r in records) / len(records),
        "peak_gib": max(r["memory/peak_gib"] for r in records),
        "peak_above_start_gib": max(r["memory/peak_above_start_gib"] for r in records),
        "cpu_s": across_restarts([r["cpu_s"] for r in records]),
        "wall_s": across_restarts([r["time"] for r in records]),
    }


def format_costs(costs: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table of :func:`run_cost` results, one column per run (in the order given)."""
    names = list(costs)
    lines = ["| cost | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, label in COSTS:
        cells = []
        for n in names:
            v = costs[n][key]
            cells.append(f"{v:.2f}" if isinstance(v, float) else str(v))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def estimator_targets(
    rows: Mapping[str, Mapping[str, float]],
    costs: Mapping[str, Mapping[str, Any]],
    sft: str,
    method: str,
) -> dict[str, bool]:
    """The critic-free RL issue's targets for ``method`` (True = met).

    Args:
        rows: held-out rows (:func:`mmalign.eval.rlhf_study.study_row`) by model name.
        costs: :func:`run_cost` results by the same names.
        sft: the SFT model's name.
        method: a run's name.

    Returns:
        For a run with the verifiable reward (``judge``): ``≥ 90 % of the prior false "yes"
        removed`` and ``clear QA drop ≤ 1 point``. For a ReMax run, when a PPO run with the same
        reward is in ``costs``: ``matches PPO`` (false "yes" within 0.05 of PPO's and clear QA
        within 1 point) and ``peak memory ≤ 0.6× PPO``.
    """
    s, m, cost = rows[sft], rows[method], costs[method]
    out: dict[str, bool] = {}
    if cost["reward"] == "judge":
        removed = (s["prior_yes"] - m["prior_yes"]) / s["prior_yes"] if s["prior_yes"] > 0 else float("nan")
        out['≥ 90 % of the prior false "yes" removed'] = removed >= 0.9
        out["clear QA drop ≤ 1 point"] = s["clear_qa"] - m["clear_qa"] <= 0.01
    if cost["estimator"] == "remax":
        ppo = [n for n, c in costs.items() if c["estimator"] == "ppo" and c["reward"] == cost["reward"]]
        if ppo:
            p = rows[ppo[0]]
            out[f"matches {ppo[0]}"] = (
                abs(m["prior_yes"] - p["prior_yes"]) <= 0.05 and p["clear_qa"] - m["clear_qa"] <= 0.01
            )
            mine, theirs = cost["peak_above_start_gib"], costs[ppo[0]]["peak_above_start_gib"]
            out[f"peak memory ≤ 0.6× {ppo[0]}"] = mine <= 0.6 * theirs
    return out
