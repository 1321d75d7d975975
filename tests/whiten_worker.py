"""One rank of the 2-process whitening test (tests/test_advantages.py); run under torchrun, gloo.

Each rank whitens its own slice of the fixed batch from ``whiten_batch`` (rank 0: rows 0–1 with
T = 6; rank 1: rows 2–4 cut to T = 4, its longest row) and saves the result to ``OUT/rank{r}.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mmalign.rl.advantages import whiten

LENGTHS = [6, 2, 4, 1, 3]


def whiten_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed (5, 6) batch with suffix padding of lengths ``LENGTHS``; padding holds 1e6."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 6, generator=g) * 3 + 2
    mask = torch.arange(6)[None, :] < torch.tensor(LENGTHS)[:, None]
    return torch.where(mask, x, torch.tensor(1e6)), mask


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    x, mask = whiten_batch()
    rows, cols = (slice(0, 2), slice(0, 6)) if rank == 0 else (slice(2, 5), slice(0, 4))
    xs, ms = x[rows, cols], mask[rows, cols]
    result = {"shifted": whiten(xs, ms), "unshifted": whiten(xs, ms, shift_mean=False)}
    torch.save(result, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
