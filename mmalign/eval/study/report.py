"""The study's report: mean ± std over seeds per row and regime, "beats the control" marks, the
targets of issue 18 judged, and one bar chart per metric (methods side by side, error bars over
seeds).

The rule (:func:`beats_control`): a row beats its control on a metric only when its mean is better
than the control's by more than both standard deviations — the issue's criterion, stricter than
overlapping error bars. With one seed the spread is unknown (std 0) and the rule reduces to "better".
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

CLEAR = ("existence", "color", "count", "position")
POPE = tuple(f"pope_{s}_{k}" for s in ("random", "popular", "adversarial") for k in ("f1", "yes_ratio"))

#: (key, label, direction): "lower" / "higher" is better; None = descriptive (no mark).
METRICS: tuple[tuple[str, str, str | None], ...] = (
    ("prior_yes", 'prior false "yes", violating scenes', "lower"),
    ("prior_yes_control", 'prior false "yes", control scenes', "lower"),
    ("prior_mention", "captions naming the absent partner, violating", "lower"),
    ("prior_mention_control", "captions naming the absent partner, control", "lower"),
    ("chair_i", "CHAIR-i", "lower"),
    ("chair_s", "CHAIR-s", "lower"),
    *(
        (
            k,
            f"POPE {k.split('_')[1]} {'F1' if k.endswith('f1') else 'yes-ratio'}",
            "higher" if k.endswith("f1") else None,
        )
        for k in POPE
    ),
    ("existence", "clear QA: existence", "higher"),
    ("color", "clear QA: colour", "higher"),
    ("count", "clear QA: count", "higher"),
    ("position", "clear QA: position", "higher"),
    ("clear_qa", "clear QA: mean of the four", "higher"),
    ("video_motion", "video QA: motion direction", "higher"),
    ("video_existence", "video QA: existence", "higher"),
    ("video_prior_yes", 'video: prior false "yes", violating clips', "lower"),
    ("video_prior_mention", "video: descriptions naming the absent partner, violating", "lower"),
    ("mmhal", "MMHal-style exact rating (0-6)", "higher"),
    ("mmhal_hallucination_rate", "MMHal-style hallucination rate (rating < 3)", "lower"),
    ("caption_words", "mean answer length (caption words)", None),
    ("train_wall_s", "training wall time, training loop (s)", None),
    ("launch_wall_s", "training wall time, whole subprocesses (s)", None),
    ("train_cpu_s", "training CPU time, all ranks (s)", None),
    ("peak_gib", "training peak memory, largest rank (GiB)", None),
    ("peak_above_start_gib", "  of which above the process before loading models (GiB)", None),
)
DIRECTION = {k: d for k, _, d in METRICS}


def beats_control(method: tuple[float, float], control: tuple[float, float], lower_is_better: bool) -> bool:
    """Whether a row beats its control on one metric (issue 18's rule).

    Args:
        method: the row's (mean, std) over seeds.
        control: the control's (mean, std) over seeds.
        lower_is_better: True for hallucination rates, False for accuracy / F1.

    Returns:
        True only when the method's mean is better than the control's by more than the method's
        std and more than the control's std. NaN (a metric not measured) never beats.
    """
    (m, m_std), (c, c_std) = method, control
    if any(math.isnan(x) for x in (m, m_std, c, c_std)):
        return False
    gain = c - m if lower_is_better else m - c
    return gain > m_std and gain > c_std


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value; NaN for none or any NaN)."""
    vals = [float(v) for v in values]
    if not vals or any(math.isnan(v) for v in vals):
        return float("nan"), float("nan")
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def row_values(result: Mapping[str, Any]) -> dict[str, float]:
    """One run's metric values (NaN where not measured) from a ``run_study`` row."""
    m, cost = result["measured"], result["cost"]
    out = {}
    for key, _, _ in METRICS:
        v = cost.get(key) if key in cost else m.get(key)
        out[key] = float(v) if isinstance(v, (int, float)) else float("nan")
    if all(isinstance(m.get(k), (int, float)) for k in CLEAR):
        out["clear_qa"] = sum(float(m[k]) for k in CLEAR) / len(CLEAR)
    return out


def aggregate(results: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{regime: {entry: {"n": seeds, "control": name, "method": kind, key: (mean, std)}}}``; the SFT
    row (measured once) appears in every regime."""
    rows = results["rows"]
    regimes = sorted({r["regime"] for r in rows if r["regime"] != "both"}, key=lambda r: r != "noisy") or [
        "noisy"
    ]
    table: dict[str, dict[str, dict[str, Any]]] = {g: {} for g in regimes}
    order = list(dict.fromkeys(r["entry"] for r in rows))
    for regime in regimes:
        for entry in order:
            runs = [r for r in rows if r["entry"] == entry and r["regime"] in (regime, "both")]
            if not runs:
                continue
            values = [row_values(r) for r in runs]
            first = runs[0]
            agg: dict[str, Any] = {
                "n": len(runs), "control": first["control"], "method": first["method"], "subset": first.get("subset"),
                "corpus": first.get("corpus"), "examples": first.get("steps", 0) * first.get("batch", 0),
            }  # fmt: skip
            for key, _, _ in METRICS:
                agg[key] = mean_std([v[key] for v in values])
            table[regime][entry] = agg
    return table


def _fmt(ms: tuple[float, float]) -> str:
    m, s = ms
    if math.isnan(m):
        return "n/a"
    big = abs(m) >= 10
    return f"{m:.0f} ± {s:.0f}" if big else f"{m:.3f} ± {s:.3f}"


def _marked(rows: dict[str, dict[str, Any]], name: str, key: str, direction: str | None) -> str:
    """``rows[name][key]`` formatted, with ✓ when it beats its control's (:func:`beats_control`)."""
    cell, ctrl = _fmt(rows[name][key]), rows[name]["control"]
    if direction and ctrl in rows and beats_control(rows[name][key], rows[ctrl][key], direction == "lower"):
        cell += " ✓"
    return cell


def regime_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: one row per metric, one column per entry; ✓ where the entry beats its control."""
    names = list(rows)
    lines = [
        "| metric | " + " | ".join(f"{n} (n={rows[n]['n']})" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key, label, direction in METRICS:
        cells = []
        for n in names:
            cells.append(_marked(rows, n, key, direction))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(rows: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, bool | None, str]]:
    """Issue 18's targets on one regime's rows: ``(target, met or None when not judgeable, evidence)``.

    POVID's prior false "yes" ≤ 0.1× SFT's, LRV's ≤ 0.3×; each one's caption mentions of the absent
    partner ≤ 0.5× SFT's; each beats its control (false "yes") with clear QA at most 1 point
    below SFT's; Align²LLaVA's curated subset within one std of the full set (false "yes" and
    clear QA).
    """
    sft = next((r for r in rows.values() if r["method"] == "sft"), None)
    out: list[tuple[str, bool | None, str]] = []
    if sft is None:
        return [("targets need the SFT row", None, "no sft entry")]
    s_yes, s_men, s_qa = sft["prior_yes"][0], sft["prior_mention"][0], sft["clear_qa"][0]
    for name, r in rows.items():
        factor = {"povid": 0.1, "lrv": 0.3}.get(r["method"])
        if factor is None:
            continue
        yes, men, qa = r["prior_yes"][0], r["prior_mention"][0], r["clear_qa"][0]
        out.append(
            (
                f'{name}: false "yes" ≤ {factor}× SFT',
                yes <= factor * s_yes,
                f"{yes:.3f} vs {factor * s_yes:.3f}",
            )
        )
        out.append(
            (f"{name}: partner mentions ≤ 0.5× SFT", men <= 0.5 * s_men, f"{men:.3f} vs {0.5 * s_men:.3f}")
        )
        ctrl = rows.get(r["control"])
        if ctrl is not None:
            beat = beats_control(r["prior_yes"], ctrl["prior_yes"], True)
            out.append(
                (
                    f'{name}: beats {r["control"]} on false "yes"',
                    beat,
                    f"{_fmt(r['prior_yes'])} vs {_fmt(ctrl['prior_yes'])}",
                )
            )
        out.append((f"{name}: clear QA ≥ SFT − 1 point", qa >= s_qa - 0.01, f"{qa:.3f} vs SFT {s_qa:.3f}"))
    curated = [n for n, r in rows.items() if r["method"] == "align2llava" and r.get("subset") != "full"]
    full = [n for n, r in rows.items() if r["method"] == "align2llava" and r.get("subset") == "full"]
    for name in curated:
        c = rows[name]
        if full:
            ref, label = full[0], full[0]
        elif c.get("corpus") == c.get("examples") and c["control"] in rows:
            # the control IS SFT on the full corpus (its first steps × batch records, one pass), same steps
            ref, label = c["control"], f"{c['control']} (= SFT on the full corpus, same steps)"
        else:
            out.append((f"{name}: curated vs full", None, "needs a `subset: full` entry"))
            continue
        f = rows[ref]
        for key in ("prior_yes", "clear_qa"):
            (cm, cs), (fm, fs) = c[key], f[key]
            met = abs(cm - fm) <= max(cs, fs)
            out.append(
                (f"{name} within one std of {label} ({key})", met, f"{_fmt(c[key])} vs {_fmt(f[key])}")
            )
    return out


def format_report(results: Mapping[str, Any], charts: Sequence[Path] = ()) -> str:
    """The whole ``report.md``."""
    table = aggregate(results)
    seeds = results["seeds"]
    lines = [
        "# Efficacy study (issue 18): every method against the same-budget control",
        "",
        f"Seeds {seeds}; mean ± std over seeds (sample std; 0 with one seed). ✓ = beats its control: mean better by "
        "more than both stds (lower is better for hallucination rates, higher for accuracy / F1). "
        f"Held-out data: `{results['eval_data']}` (its own seed); training data: `{results['train_data']}`.",
        "",
    ]
    wordings = results.get("wordings") or []
    if wordings:
        lines += [
            f"Questions asked in the **{wordings[0]}** wording (tables, targets and charts); `results.json` "
            f"also holds every row measured in {', '.join(wordings)} (`measured_wordings`).",
            "",
        ]
    if len(seeds) < 3:
        lines += ["**Fewer than 3 seeds: no claim can be made from these numbers (a smoke run).**", ""]
    lines += ["At a glance:", "", summary_table(results), ""]
    for regime, rows in table.items():
        lines += [f"## Regime: {regime}", "", regime_table(rows), "", "Targets:", ""]
        for name, met, evidence in targets(rows):
            mark = "n/a" if met is None else ("met" if met else "MISSED")
            lines.append(f"- {name}: **{mark}** ({evidence})")
        lines.append("")
    isrt = [r for r in results["rows"] if r["method"] == "isrt" and r.get("budget")]
    if isrt:
        lines += [
            "i-SRT's budget is set by the pairs its own judge kept (DPO, `epochs` over them); its control "
            "trains the same optimizer steps from the same start model on those pairs' prompts answered by "
            "the training annotations (0 steps: both rows are the start model):",
            "",
            *(f"- {r['entry']} seed {r['seed']}: {r['budget']['pairs']} pairs, {r['budget']['steps']} DPO steps"
              for r in isrt),
            "",
        ]  # fmt: skip
    lines += [
        "MMHal-style rating: `mmalign.eval.mmhal.exact_rating` on ShapeWorld MMHal records (5 = correct and "
        "hallucination-free; 6 is never given). A metric that was not measured is n/a.",
        "",
        f"Study wall time: {results['wall_s']:.0f} s (including data building and measurement).",
    ]
    if charts:
        lines += ["", "Charts: " + ", ".join(f"`{Path(c).name}`" for c in charts)]
    return "\n".join(lines) + "\n"


def plot_metrics(results: Mapping[str, Any], out: str | Path) -> list[Path]:
    """One PNG per metric measured: entries on the x axis, one bar per regime, error bars = std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = aggregate(results)
    regimes = list(table)
    entries = list(dict.fromkeys(e for rows in table.values() for e in rows))
    written = []
    for key, label, _ in METRICS:
        if all(math.isnan(rows[e][key][0]) for rows in table.values() for e in rows):
            continue
        fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(entries)), 3.6))
        width = 0.8 / max(1, len(regimes))
        for i, regime in enumerate(regimes):
            xs, means, stds = [], [], []
            for j, e in enumerate(entries):
                if e in table[regime]:
                    m, s = table[regime][e][key]
                    xs.append(j + (i - (len(regimes) - 1) / 2) * width)
                    means.append(m)
                    stds.append(s)
            ax.bar(xs, means, width, yerr=stds, capsize=3, label=regime)
        ax.set_xticks(range(len(entries)))
        ax.set_xticklabels(entries, rotation=20, ha="right")
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = Path(out) / f"{key}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


#: The headline metrics of :func:`summary_table` (the quickstart prints it).
HEADLINE = (
    "prior_yes", "prior_yes_control", "prior_mention", "chair_i", "chair_s", "pope_adversarial_f1",
    "pope_adversarial_yes_ratio", "existence", "color", "count", "clear_qa", "mmhal", "train_wall_s",
)  # fmt: skip


def summary_table(results: Mapping[str, Any], keys: Sequence[str] = HEADLINE) -> str:
    """Markdown: one row per headline metric, one column per row of the study and regime (the SFT
    model once; a control in the clean regime labelled the clean oracle); ✓ as in the report."""
    table = aggregate(results)
    labels = {k: label for k, label, _ in METRICS}
    cols: list[tuple[str, str, str]] = []  # (regime, entry, label)
    for regime, rows in table.items():
        for name, r in rows.items():
            if r["method"] == "sft":
                if not any(c[1] == name for c in cols):
                    cols.append((regime, name, name))
                continue
            oracle = r["method"] == "control" and regime == "clean"
            cols.append((regime, name, f"{name} ({regime}{': oracle' if oracle else ''})"))
    # the SFT model, the controls (noisy, then the clean oracle), then the methods in config order
    order = list(dict.fromkeys(r["entry"] for r in results["rows"]))
    kind = {"sft": 0, "control": 1}
    regimes = list(table)
    cols.sort(
        key=lambda c: (kind.get(table[c[0]][c[1]]["method"], 2), order.index(c[1]), regimes.index(c[0]))
    )
    lines = ["| metric | " + " | ".join(c[2] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for key in keys:
        cells = []
        for regime, name, _ in cols:
            cells.append(_marked(table[regime], name, key, DIRECTION[key]))
        lines.append(f"| {labels[key]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_study(results: Mapping[str, Any], out: str | Path) -> str:
    """Write ``results.json``, the charts (``charts/``) and ``report.md`` under ``out``; returns the report."""
    out = Path(out)
    charts_dir = out / "charts"
    charts_dir.mkdir(parents=True, exist_ok=True)
    charts = plot_metrics(results, charts_dir)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    report = format_report(results, charts)
    (out / "report.md").write_text(report)
    return report
