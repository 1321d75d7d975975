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
