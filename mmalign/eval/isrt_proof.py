"""The i-SRT proof on ShapeWorld videos: what each iteration did and whether the targets are met.

``eval/isrt_proof.py`` runs it; this module holds its parts:

* :func:`plan_commands` — the subprocesses: the label-free pool and the judge/revise format
  records (``data_builders/shapeworld_isrt.py``), the format continuation from the shipped model
  (``configs/isrt/judge_format.yaml``), one i-SRT run per context mode (``train/isrt.py``, the
  ablation is one knob) and the same-budget control;
* :func:`control_records` — the control's data: SFT on *the same prompts* as the i-SRT run's pairs
  with their training annotations (noise included), one record per pair, at DPO's step count;
* :func:`iteration_rows` — per iteration of a run: the judge's agreement with the exact oracle,
  ties, pairs, DPO reward accuracy and margin, sampled answer length, and the precision / recall of
  the contexts c_t against the clips (:func:`mmalign.eval.video_hallucination.context_quality`);
* :func:`judge_targets` / :func:`format_report` — the issue's targets, judged, and ``report.md``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmalign.eval.study.methods import Command
from mmalign.eval.video_hallucination import context_quality
from mmalign.isrt.store import StageStore
from mmalign.shapeworld.recipe.isrt_data import load_clips

MODES = ("retrospective", "fresh", "none")


@dataclass(frozen=True)
class ProofPlan:
    """Sizes and places of one proof run.

    Attributes:
        data: the ShapeWorld dataset (train clips: the pool; test clips: held-out).
        out: the proof's folder.
        model: the shipped SFT checkpoint (the format continuation starts from it).
        isrt_config / format_config: the i-SRT and format-continuation configs.
        iterations: i-SRT iterations per run (≥ 3 for the proof).
        per_iteration: prompts drawn per iteration.
        modes: context modes run with the self judge (the first, ``retrospective``, is the main
            run).
        oracle: also run the exact ShapeWorld judge with retrospective context (``oracle``): what
            the loop does when the judge is right (an upper bound, not i-SRT).
        format_steps: optimizer steps of the format continuation.
        extra: overrides passed to every i-SRT run (``key=value``).
        ranks: DeepSpeed ranks of the format continuation and the i-SRT runs.
    """

    data: Path
    out: Path
    model: Path
    isrt_config: Path
    format_config: Path
    iterations: int = 3
    per_iteration: int = 192
    modes: tuple[str, ...] = MODES
    oracle: bool = True
    format_steps: int = 300
    extra: tuple[str, ...] = ()
    ranks: int = 2

    @property
    def start(self) -> Path:
        """The i-SRT start model (shipped model + judge/revise formats)."""
        return self.out / "format" / "final"

    @property
    def runs(self) -> dict[str, tuple[str, str]]:
        """Each i-SRT run's name → (judge, context): the self-judge modes, then ``oracle``."""
        out = {mode: ("self", mode) for mode in self.modes}
        if self.oracle:
            out["oracle"] = ("oracle", "retrospective")
        return out

    @property
    def controlled(self) -> tuple[str, ...]:
        """The runs that get a same-budget control: the main run and the oracle run."""
        return tuple(n for n in (self.modes[0], "oracle") if n in self.runs)

    def run(self, name: str) -> Path:
        """The folder of i-SRT run ``name`` (a key of :attr:`runs`)."""
        return self.out / f"isrt-{name}"


def prepare_commands(p: ProofPlan) -> list[Command]:
    """The label-free pool, the judge/revise format records and the start model (:attr:`ProofPlan.start`:
    the format continuation of ``p.model``, ``p.format_steps`` steps on the formats mixed with the
    training annotations it learned from); each ``done`` when its output exists."""
    data_dir, logs = p.out / "data", p.out / "logs"
    return [
        Command(("data_builders/shapeworld_isrt.py", "pool", "--data", str(p.data), "--out", str(data_dir / "pool.jsonl")),
                data_dir / "pool.jsonl", log=logs / "pool.log"),
        Command(("data_builders/shapeworld_isrt.py", "format", "--data", str(p.data), "--isrt-config",
                 str(p.isrt_config), "--out", str(data_dir / "format.json")),
                data_dir / "format.json", log=logs / "format-data.log"),
        Command(("train/sft.py", "--config", str(p.format_config), f"model={p.model}", f"out={p.out / 'format'}",
                 f"max_steps={p.format_steps}",
                 f'data=[{{"path": "{data_dir / "format.json"}", "media_root": "{p.data}"}}, '
                 f'{{"path": "{p.data / "llava/train.json"}", "media_root": "{p.data}", "max_records": 3200, '
                 '"tasks": ["video_caption", "video_existence", "video_motion", "video_count", "video_event", '
                 '"video_appear", "video_leave"]}, '
                 f'{{"path": "{p.data / "llava/train.json"}", "media_root": "{p.data}", "max_records": 1600, '
                 '"tasks": ["existence", "color", "count", "position", "caption"]}]'),
                p.start, ranks=p.ranks, log=logs / "format.log", run=p.out / "format"),
    ]  # fmt: skip


def isrt_command(
    p: ProofPlan, run: Path, judge: str, context: str, log: Path, extra: Sequence[str] = ()
) -> Command:
    """One ``train/isrt.py`` run from :attr:`ProofPlan.start` on the proof's pool (``p.iterations``
    iterations of ``p.per_iteration`` prompts, ``p.extra`` then ``extra`` as overrides), done when
    ``run/done.json`` exists (written after the last iteration's row)."""
    pool = p.out / "data" / "pool.jsonl"
    argv = ("train/isrt.py", "--config", str(p.isrt_config), f"model={p.start}", f"out={run}",
            f"judge={judge}", f"context={context}", f"iterations={p.iterations}", f"pool.path={pool}",
            "pool.shapeworld=null", f"pool.media_root={p.data}", f"pool.per_iteration={p.per_iteration}",
            "eval.shapeworld=null", *p.extra, *extra)  # fmt: skip
    return Command(argv, run / "done.json", ranks=p.ranks, log=log, run=run)


def plan_commands(p: ProofPlan) -> list[Command]:
    """The data, format and i-SRT commands (the control follows: :func:`control_command`)."""
    runs = [isrt_command(p, p.run(name), judge, context, p.out / "logs" / f"isrt-{name}.log")
            for name, (judge, context) in p.runs.items()]  # fmt: skip
    return [*prepare_commands(p), *runs]


def control_command(p: ProofPlan, name: str, data_file: Path, steps: int) -> Command:
    """SFT from the start model on ``data_file`` (:func:`control_records` of run ``name``) with
    DPO's optimizer steps and micro-batch (8 per rank, ZeRO-3, configs/shapeworld/control.yaml)."""
    out = p.out / f"control-{name}"
    argv = ("train/sft.py", "--config", "configs/shapeworld/control.yaml", f"model={p.start}", f"out={out}",
            f'data=[{{"path": "{data_file}", "media_root": "{p.data}"}}]', f"max_steps={steps}",
            "strategy.micro_batch_size=8", "strategy.zero_stage=3", "optim.warmup_steps=2", "log_every=1")  # fmt: skip
    return Command(argv, out / "final", ranks=2, log=p.out / "logs" / f"control-{name}.log", run=out)


def control_records(run: Path, pool: Path, iterations: int) -> list[dict[str, Any]]:
    """The same-budget control's data: for every pair DPO trained on in ``run`` (all iterations),
    its prompt with the pool's training ``annotation`` as the answer (LLaVA JSON).

    Raises:
        FileNotFoundError: an iteration has no pairs store.
        KeyError: a pair's id is not in the pool.
    """
    by_id = {r["id"]: r for r in (json.loads(x) for x in pool.read_text().splitlines() if x.strip())}
    out = []
    for t in range(iterations):
        directory = run / f"iter_{t}"
        if not (directory / "pairs.done").exists():
            raise FileNotFoundError(f"{directory} has no finished pairs stage")
        for pid, pair in sorted(StageStore(directory, "pairs").read().items()):
            rec = by_id[pid]
            out.append({
                "id": f"{pid}-t{t}", "video": rec["video"], "task": rec["truth"]["type"], "scene_id": rec["scene_id"],
                "conversations": [{"from": "human", "value": f"<video>\n{pair['prompt']}"},
                                  {"from": "gpt", "value": rec["annotation"]}],
            })  # fmt: skip
    return out


def iterate_model(run: Path, t: int) -> Path:
    """π_{t+1} of a run: what iteration t's DPO stage exported (π_t itself when it had no pairs).

    Raises:
        FileNotFoundError: iteration t's DPO stage has not finished.
    """
    return Path(json.loads((run / f"iter_{t}" / "dpo.done").read_text())["model"])


def dpo_budget(run: Path, iterations: int) -> dict[str, int]:
    """Optimizer steps and pairs of a run's DPO stages (``iter_t/dpo.done``).

    Raises:
        FileNotFoundError: an iteration's DPO stage has not finished.
    """
    steps = pairs = 0
    for t in range(iterations):
        done = json.loads((run / f"iter_{t}" / "dpo.done").read_text())
        steps += int(done.get("steps", 0))
        pairs += int(done.get("pairs", 0))
    return {"steps": steps, "pairs": pairs}


def iteration_rows(run: Path, data: Path) -> list[dict[str, Any]]:
    """One row per finished iteration of an i-SRT run (module docstring); the contexts are judged
    against the pool split's clips (``scenes/train.jsonl``, keyed ``videos/<clip id>.mp4`` as the
    pool's ``video`` field). ``[]`` before the run has written ``iterations.jsonl``.

    Raises:
        FileNotFoundError: ``data`` has no ``scenes/train.jsonl``.
    """
    path = run / "iterations.jsonl"
    if not path.exists():
        return []
    clips = {f"videos/{k}.mp4": v for k, v in load_clips(data, "train").items()}
    rows = []
    for r in (json.loads(x) for x in path.read_text().splitlines() if x.strip()):
        t = r["iteration"]
        if t < 0:
            continue
        contexts = {k: v["context"] for k, v in StageStore(run / f"iter_{t}", "contexts").read().items()}
        quality = context_quality(contexts, clips) if contexts else {}
        rows.append({
            "iteration": t,
            "agreement": r.get("judge/oracle_agreement", math.nan),
            "decided": r.get("judge/judge_decided_on_decisive", 0),
            "coverage": r.get("judge/oracle_coverage", math.nan),
            "margin_agreement": r.get("judge/margin_agreement", math.nan),
            "margin_pairs": r.get("judge/margin_pairs", 0),
            "judged": r.get("judge/judged", 0), "ties": r.get("judge/ties", 0), "pairs": r.get("pairs", 0),
            "reward_accuracy": r.get("dpo/rewards/accuracy", math.nan),
            "reward_margin": r.get("dpo/rewards/margin", math.nan),
            "sample_length": r.get("samples/response_length", math.nan),
            "context_precision": quality.get("precision", math.nan),
            "context_recall": quality.get("recall", math.nan),
            "context_chair_i": quality.get("chair_i", math.nan),
            "model": r.get("model"),
        })  # fmt: skip
    return rows


HALLUCINATION_KEYS = ("prior/yes", "prior/mention", "desc/chair_i", "desc/wrong_motion")


def judge_targets(
    rows: Mapping[str, Sequence[Mapping[str, Any]]], measured: Mapping[str, Mapping[str, Any]], last: str
) -> dict[str, Any]:
    """The issue's targets on measured numbers.

    Args:
        rows: :func:`iteration_rows` per context mode.
        measured: held-out measurements (:func:`mmalign.eval.video_hallucination.measure_video`)
            by name: ``sft`` (shipped), ``start`` (i-SRT's start model), ``last`` named by ``last``.
        last: the key of the last iterate in ``measured``.

    Returns:
        per target ``{value, goal, met}``: retrospective agreement above no context's and above
        chance (pooled over iterations; on decided pairs, and by the sign of the mean margin on every
        compared pair — ``met`` None when either is unmeasured), each hallucination measure falling ≥ 50 % from ``start`` to the last iterate,
        video QA accuracy at most 1 point below ``start``, answers no longer than the SFT model's.
    """

    def pooled(mode: str, key: str, count: str) -> float:
        """The rate over every iteration's items together (Σ rate × count / Σ count)."""
        items = [
            (r[key], r.get(count, 0)) for r in rows.get(mode, []) if not math.isnan(r.get(key, math.nan))
        ]
        total = sum(n for _, n in items)
        return sum(v * n for v, n in items) / total if total else math.nan

    out: dict[str, Any] = {}
    for key, count, label in (
        ("agreement", "decided", "decided pairs"),
        ("margin_agreement", "margin_pairs", "mean margin, every pair"),
    ):
        retro, none = pooled("retrospective", key, count), pooled("none", key, count)
        known = not math.isnan(retro + none)
        out[f"agreement ({label}): retrospective > none and > 0.5"] = {
            "value": f"{retro:.3f} vs {none:.3f}", "goal": "> none, > 0.5",
            "met": bool(retro > none and retro > 0.5) if known else None,
        }  # fmt: skip
    start, end = measured["start"], measured[last]
    for key in HALLUCINATION_KEYS:
        a, b = start.get(key, math.nan), end.get(key, math.nan)
        fall = 1 - b / a if a and not math.isnan(a + b) else math.nan
        out[f"{key} falls >= 50%"] = {
            "value": f"{a:.3f} -> {b:.3f} ({fall:+.0%})" if not math.isnan(fall) else f"{a} -> {b}",
            "goal": ">= 50% fall", "met": bool(fall >= 0.5) if not math.isnan(fall) else None,
        }  # fmt: skip
    qa_drop = start["qa/accuracy"] - end["qa/accuracy"]
    out["video QA accuracy -1 point at worst"] = {
        "value": f"{start['qa/accuracy']:.3f} -> {end['qa/accuracy']:.3f}",
        "goal": "drop <= 0.01",
        "met": bool(qa_drop <= 0.01),
    }
    sft_len = measured["sft"]["qa/answer_words"]
    out["answers no longer than SFT's"] = {
        "value": f"{end['qa/answer_words']:.2f} vs {sft_len:.2f} words", "goal": "<=",
        "met": bool(end["qa/answer_words"] <= sft_len),
    }  # fmt: skip
    return out


def _f(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.3f}"
    return str(v)


HELD_OUT = (
    ("prior/yes", 'false "yes" to the absent partner, violating clips'),
    ("prior/yes_control", 'false "yes" to the partner, control clips'),
    ("prior/mention", "descriptions naming the absent partner, violating"),
    ("prior/mention_control", "descriptions naming the partner, control"),
    ("desc/chair_i", "descriptions: hallucinated objects (CHAIR-i)"),
    ("desc/chair_s", "descriptions with a hallucinated object (CHAIR-s)"),
    ("desc/wrong_motion", "descriptions: wrong motions"),
    ("desc/recall", "descriptions: recall of the clip's shapes"),
    ("qa/accuracy", "video QA accuracy (exact, all types)"),
    ("qa/video_existence", "video QA: existence"),
    ("qa/video_motion", "video QA: motion"),
    ("qa/answer_words", "mean answer length (words)"),
)


def format_report(
    rows: Mapping[str, Sequence[Mapping[str, Any]]], measured: Mapping[str, Mapping[str, Any]],
    targets: Mapping[str, Any], notes: Sequence[str] = (),
) -> str:  # fmt: skip
    """``report.md``: per-iteration table per context mode, held-out table, targets."""
    lines = ["# i-SRT on ShapeWorld videos", "", *notes, "", "## Per iteration (training pool)", ""]
    cols = ("iteration", "agreement", "decided", "coverage", "margin_agreement", "margin_pairs", "judged", "ties", "pairs", "reward_accuracy", "reward_margin",
            "sample_length", "context_precision", "context_recall", "context_chair_i")  # fmt: skip
    for mode, mode_rows in rows.items():
        lines += [f"### {mode}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_f(r[c]) for c in cols) + " |" for r in mode_rows]
        lines.append("")
    names = list(measured)
    lines += ["## Held-out clips (test split, greedy, exact judges)", "",
              "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]  # fmt: skip
    for key, label in HELD_OUT:
        lines.append(f"| {label} | " + " | ".join(_f(measured[n].get(key, math.nan)) for n in names) + " |")
    lines += ["", "## Targets", "", "| target | measured | goal | met |", "|---|---|---|---|"]
    for name, t in targets.items():
        met = "yes" if t["met"] else "no" if t["met"] is not None else "n/a"
        lines.append(f"| {name} | {t['value']} | {t['goal']} | {met} |")
    return "\n".join(lines) + "\n"
