"""PNG charts of training runs (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a run's ``metrics.jsonl`` (a run folder or the file)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curves(runs: dict[str, str | Path], out: str | Path, key: str = "loss") -> Path:
    """One line per run (``label → run folder``), steps of consecutive runs placed end to end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    offset = 0
    for label, run in runs.items():
        records = [r for r in read_metrics(run) if key in r]
        steps = [offset + r["step"] for r in records]
        ax.plot(steps, [r[key] for r in records], label=label)
        offset = steps[-1] if steps else offset
    ax.set_xlabel("optimizer step (stages end to end)")
    ax.set_ylabel(key)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_metrics(run: str | Path, keys: list[str], out: str | Path) -> Path:
    """One panel per metric ``key`` of a run's ``metrics.jsonl`` against its step (keys never
    logged are left out); e.g. an RL run's reward terms, KL and response length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run)
    present = [k for k in keys if any(k in r for r in records)]
    cols = min(3, max(1, len(present)))
    rows = max(1, -(-len(present) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, present, strict=False):
        points = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
        ax.plot([s for s, _ in points], [v for _, v in points], marker=".")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present) :]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
