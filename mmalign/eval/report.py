"""Side-by-side reports of benchmark results: headline metrics, a markdown table, PNG charts."""

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
    ("videoqa", "video QA score (0-5)", ("score",), True),
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


def markdown_table(by_model: dict[str, dict[str, Any]]) -> str:
    """Metrics as rows, checkpoints as columns; ↑/↓ mark the better direction, the best is bold."""
    names = list(by_model)
    heads = {m: headline_metrics(r) for m, r in by_model.items()}
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for _, label, _, higher in HEADLINES:
        values = [heads[m].get(label) for m in names]
        if all(v is None for v in values):
            continue
        present = [v for v in values if v is not None]
        best = (max if higher else min)(present) if higher is not None and len(names) > 1 else None
        cells = ["–" if v is None else (f"**{v:.3f}**" if v == best else f"{v:.3f}") for v in values]
        arrow = " ↑" if higher else " ↓" if higher is False else ""
        lines.append(f"| {label}{arrow} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
