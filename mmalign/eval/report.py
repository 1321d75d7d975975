"""Side-by-side reports of benchmark results: headline metrics, a markdown table (with counts of
the answers that could not be read), PNG charts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# (benchmark, label, path into the result, higher is better)
HEADLINES: tuple[tuple[str, str, tuple[str, ...], bool], ...] = (
    ("pope", "POPE random F1", ("random", "f1"), True),
    ("pope", "POPE popular F1", ("popular", "f1"), True),
    ("pope", "POPE adversarial F1", ("adversarial", "f1"), True),
    ("pope", "POPE avg accuracy", ("average", "accuracy"), True),
    ("pope", "POPE avg yes-ratio", ("average", "yes_ratio"), None),
    ("chair", "CHAIR-i", ("chair_i",), False),
    ("chair", "CHAIR-s", ("chair_s",), False),
    ("chair", "caption recall", ("recall",), True),
    ("mmhal", "MMHal avg rating (0-6)", ("average",), True),
    ("mmhal", "MMHal hallucination rate", ("hallucination_rate",), False),
    ("gavie", "GAVIE accuracy (0-10)", ("accuracy",), True),
    ("gavie", "GAVIE relevancy (0-10)", ("relevancy",), True),
    ("videoqa", "video QA accuracy", ("accuracy",), True),
    ("videoqa", "video QA mean judge score", ("score",), True),
)


# (benchmark, label, path to the count, path to the total) of answers or judge replies not read
UNREAD: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("pope", "POPE answers fitting neither yes nor no", ("average", "n_unparseable"), ("average", "n")),
    ("mmhal", "MMHal judge replies without a rating", ("n_unparsed",), ("n",)),
    ("gavie", "GAVIE judge replies without scores", ("n_unparsed",), ("n",)),
    ("videoqa", "video QA judge replies without a verdict", ("n_unparsed",), ("n",)),
)


def _get(result: dict[str, Any], path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return float(result) if isinstance(result, (int, float)) else None


def headline_metrics(results: dict[str, Any]) -> dict[str, float]:
    """``{label: value}`` of the headline metrics present in one model's results."""
    out = {}
    for bench, label, path, _ in HEADLINES:
        value = _get(results.get(bench, {}), path)
        if value is not None:
            out[label] = value
    return out


def _best(values: list[float | None], higher: bool | None) -> float | None:
    """The value to bold: the single best one as printed (3 decimals); None for a tie, a zero,
    a metric without a direction, or fewer than two models with a value."""
    shown = [round(v, 3) for v in values if v is not None]
    if higher is None or len(shown) < 2:
        return None
    best = max(shown) if higher else min(shown)
    return best if shown.count(best) == 1 and best != 0 else None


def unread_counts(result: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """``{label: (count, total)}`` of the answers or judge replies a benchmark could not read."""
    out = {}
    for bench, label, count_path, total_path in UNREAD:
        count, total = _get(result.get(bench, {}), count_path), _get(result.get(bench, {}), total_path)
        if count is not None and total is not None:
            out[label] = (int(count), int(total))
    return out


def markdown_table(by_model: dict[str, dict[str, Any]]) -> str:
    """Metrics as rows, checkpoints as columns; ↑/↓ mark the better direction.

    The single best value of a row is bold (not a tie, not a zero, and only when two or more
    models have the metric). Rows after the metrics count the answers (POPE) or judge replies
    (MMHal, GAVIE, video QA) that could not be read, with their share, marked ⚠ when not zero;
    a note under the table says how each model's unreadable POPE answers were scored.
    """
    names = list(by_model)
    heads = {m: headline_metrics(r) for m, r in by_model.items()}
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for _, label, _, higher in HEADLINES:
        values = [heads[m].get(label) for m in names]
        if all(v is None for v in values):
            continue
        best = _best(values, higher)
        cells = [
            "–" if v is None else (f"**{v:.3f}**" if round(v, 3) == best else f"{v:.3f}") for v in values
        ]
        arrow = " ↑" if higher else " ↓" if higher is False else ""
        lines.append(f"| {label}{arrow} | " + " | ".join(cells) + " |")
    unread = {m: unread_counts(r) for m, r in by_model.items()}
    notes = []
    for _, label, _, _ in UNREAD:
        counts = [unread[m].get(label) for m in names]
        if all(c is None for c in counts):
            continue
        cells = []
        for c in counts:
            if c is None:
                cells.append("–")
            else:
                share = c[0] / c[1] if c[1] else 0.0
                cells.append(f"{'⚠ ' if c[0] else ''}{c[0]} ({share:.1%})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for m in names:
        pope = by_model[m].get("pope", {})
        count, total = unread[m].get(UNREAD[0][1], (0, 0))
        if count:
            notes.append(
                f"⚠ {m}: {count} of {total} POPE answers ({count / total:.1%}) fit neither yes nor no and "
                f"were scored as {pope.get('unparseable_as', '?')!r} (parser {pope.get('parser', '?')!r}); "
                "the per-answer records show them."
            )
    scales = {
        m: (r["videoqa"].get("score_range"), r["videoqa"].get("judge_mode"))
        for m, r in by_model.items()
        if isinstance(r.get("videoqa"), dict) and r["videoqa"].get("score_range")
    }
    if scales:
        listed = ", ".join(f"{m} {rng} ({mode or 'judge'})" for m, (rng, mode) in scales.items())
        differ = (
            len({rng for rng, _ in scales.values()}) > 1 or len({mode for _, mode in scales.values()}) > 1
        )
        notes.append(
            f"{'⚠ ' if differ else ''}video QA score scale: {listed}"
            + ("; judged differently, so the scores are not comparable." if differ else ".")
        )
    return "\n".join(lines) + "\n" + "".join(f"\n{n}\n" for n in notes)


def plot_benchmarks(by_model: dict[str, dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """One grouped bar chart per benchmark (``<benchmark>.png``): its headline metrics per checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    heads = {m: headline_metrics(r) for m, r in by_model.items()}
    written = []
    for bench in dict.fromkeys(b for b, *_ in HEADLINES):
        labels = [lab for b, lab, *_ in HEADLINES if b == bench and any(lab in h for h in heads.values())]
        if not labels:
            continue
        fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(labels) * max(1, len(heads)) / 2, 3.6))
        width = 0.8 / max(1, len(heads))
        for k, (model, h) in enumerate(heads.items()):
            xs = [i + k * width for i in range(len(labels))]
            bars = ax.bar(xs, [h.get(lab, 0.0) for lab in labels], width, label=model)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks([i + width * (len(heads) - 1) / 2 for i in range(len(labels))], labels, fontsize=8)
        ax.set_title(bench)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{bench}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
