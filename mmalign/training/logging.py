"""Metrics to ``metrics.jsonl`` and TensorBoard, and a tqdm progress bar — on rank 0 only."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


def process_usage(device_type: str = "cpu") -> dict[str, float]:
    """This process's peak memory and CPU time so far, for comparing methods' cost.

    Args:
        device_type: ``cuda`` reads the accelerator's peak allocation
            (``torch.cuda.max_memory_allocated``); anything else the process's peak resident set
            (``ru_maxrss``, which on CPU holds the weights, optimizer states and activations).

    Returns:
        ``peak_gib`` (GiB) and ``cpu_s`` (user + system CPU seconds of this process — unlike wall
        time, barely changed by other jobs sharing the cores).
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    if device_type == "cuda":
        import torch

        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = usage.ru_maxrss / 2**20  # KiB on Linux
    return {"peak_gib": peak, "cpu_s": usage.ru_utime + usage.ru_stime}


class MetricsLogger:
    """Rank-0 sink for training metrics.

    Args:
        out_dir: run folder; ``metrics.jsonl`` and ``tb/`` are written there.
        total_steps: for the progress bar.
        start_step: the first step of this process (resumed runs start later).
        enabled: False on ranks other than 0 (every method is then a no-op).
        tensorboard: also write TensorBoard events.
    """

    def __init__(
        self,
        out_dir: str | Path,
        total_steps: int,
        start_step: int = 0,
        enabled: bool = True,
        tensorboard: bool = True,
    ) -> None:
        self.enabled = enabled
        self._bar = None
        self._tb = None
        self._file = None
        if not enabled:
            return
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "metrics.jsonl"
        for name in ("metrics.jsonl", "samples.jsonl"):  # a resumed run: keep what led up to
            older = out / name  # start_step, drop what it will redo
            if older.exists():
                kept = [
                    ln
                    for ln in older.read_text().splitlines()
                    if ln.strip() and json.loads(ln)["step"] <= start_step
                ]
                older.write_text("".join(ln + "\n" for ln in kept))
        self._samples_path = out / "samples.jsonl"
        self._file = path.open("a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out / "tb"))
        self._bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)
        self._t0 = time.time()

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Record ``metrics`` at optimizer step ``step`` (scalars only go to TensorBoard)."""
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time() - self._t0, 3), **metrics}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
        shown = {
            k: metrics[k] for k in ("loss", "reward/total", "kl/sequence", "lr", "tok/s") if k in metrics
        }
        self._bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)
        self._bar.n = step
        self._bar.refresh()

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        """Append generated samples of step ``step`` (e.g. an RL rollout's responses with their
        rewards) to ``samples.jsonl``, one record each, ``step`` first."""
        if not self.enabled or not samples:
            return
        with self._samples_path.open("a") as f:
            f.write("".join(json.dumps({"step": step, **x}) + "\n" for x in samples))

    def write(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text)

    def close(self) -> None:
        if not self.enabled:
            return
        self._bar.close()
        self._file.close()
        if self._tb is not None:
            self._tb.close()
