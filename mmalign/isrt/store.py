"""Resumable stage outputs: JSONL shards keyed by record id, a ``done`` marker per stage, and the
lockstep loop that keeps ZeRO-3 ranks running the same forwards.

A stage of iteration t writes ``out/iter_{t}/<stage>.rank{r}.jsonl`` — each rank its own shard,
one record per line, appended and fsynced per record — and, once every rank is through, rank 0
writes ``<stage>.done`` (JSON: the stage's counts). Re-running:

* a finished stage (``.done`` present) does nothing;
* a killed stage reads every shard (whatever the world size was), skips the ids already written
  and continues with the rest; a torn last line (killed mid-write) is cut off before appending,
  so no record is written twice and none is half-written;
* what a record holds depends only on its id (sampling seeds come from
  ``stable_seed(seed, iteration, id)``), so a resumed stage writes what an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mmalign.utils import atomic_write


def _cut_torn_tail(path: Path) -> None:
    """Truncate ``path`` after its last newline (a line a kill interrupted is dropped)."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


class StageStore:
    """One stage's shards and marker in an iteration folder.

    Args:
        directory: ``out/iter_{t}``.
        name: the stage (``samples``, ``contexts``, ``judgements``, ``pairs``).
        rank: this process's rank (its shard).
    """

    def __init__(self, directory: str | Path, name: str, rank: int = 0) -> None:
        self.directory = Path(directory)
        self.name = name
        self.rank = rank

    @property
    def shard(self) -> Path:
        return self.directory / f"{self.name}.rank{self.rank}.jsonl"

    @property
    def marker(self) -> Path:
        return self.directory / f"{self.name}.done"

    def is_done(self) -> bool:
        return self.marker.exists()

    def stats(self) -> dict[str, Any]:
        """The counts the finished stage recorded (``{}`` before it is done)."""
        return json.loads(self.marker.read_text()) if self.marker.exists() else {}

    def read(self) -> dict[str, dict[str, Any]]:
        """Every record of every shard by id (the first copy wins; torn lines are skipped)."""
        out: dict[str, dict[str, Any]] = {}
        for shard in sorted(self.directory.glob(f"{self.name}.rank*.jsonl")):
            for line in shard.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line a kill cut short
                out.setdefault(str(rec["id"]), rec)
        return out

    def open(self) -> None:
        """Prepare this rank's shard for appending (cut a torn tail)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        _cut_torn_tail(self.shard)

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Append records to this rank's shard, flushed and fsynced."""
        if not records:
            return
        with self.shard.open("a") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def finish(self, strategy: Any, stats: dict[str, Any] | None = None) -> None:
        """Mark the stage done once every rank is through (rank 0 writes the marker)."""
        strategy.barrier()
        if strategy.is_main:
            atomic_write(self.marker, (json.dumps(stats or {}, sort_keys=True) + "\n").encode())
        strategy.barrier()


def todo_shard(ids: Sequence[str], done: set[str], rank: int, world: int) -> list[str]:
    """This rank's share (round-robin, in pool order) of the ids not yet written."""
    return [i for i in ids if i not in done][rank::world]


def lockstep(strategy: Any, items: Sequence[Any], size: int = 1) -> Iterator[list[Any]]:
    """Chunks of ``items`` of ``size``, as many on every rank (the most any rank has): a rank that
    has run out gets empty chunks and must still run the same forwards on a filler, so ZeRO-3's
    collective gathers (and synced decoding) never wait on a rank that stopped."""
    n = -(-len(items) // size)
    total = int(strategy.all_reduce_max(float(n)))
    for c in range(total):
        yield list(items[c * size : (c + 1) * size])


def any_rank(strategy: Any, flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (every rank must call)."""
    return strategy.all_reduce_max(1.0 if flag else 0.0) > 0
