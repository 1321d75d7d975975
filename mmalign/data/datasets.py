"""Training data: sources of LLaVA records, mixtures, and a deterministic, resumable order.

The order of examples is a pure function of ``(seed, position)``: position ``p`` of the stream is
example ``perm_e[p mod n]`` of epoch ``e = p div n``, each epoch shuffled with its own seed. A run
resumed at optimizer step ``s`` therefore sees exactly the examples an uninterrupted run would,
and every rank computes its share without communication.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mmalign.data.formats import Example, load_llava


@dataclass
class DataSource:
    """One file of LLaVA records.

    Attributes:
        path: JSON or JSONL file.
        media_root: folder the media paths are relative to (default: the file's folder).
        tasks: keep only records whose ``task`` field is one of these (ShapeWorld records carry
            one); ``None`` keeps all.
        max_records: keep at most this many (after filtering, in file order).
        repeat: how many times the source appears in the mixture (upsampling).
    """

    path: str
    media_root: str | None = None
    tasks: list[str] | None = None
    max_records: int | None = None
    repeat: int = 1

    def __post_init__(self) -> None:
        if self.repeat < 1:
            raise ValueError(f"repeat must be ≥ 1, got {self.repeat}")

    def load(self) -> list[Example]:
        examples = load_llava(self.path, self.media_root)
        if self.tasks is not None:
            wanted = set(self.tasks)
            examples = [e for e in examples if e.meta.get("task") in wanted]
        if self.max_records is not None:
            examples = examples[: self.max_records]
        if not examples:
            raise ValueError(f"data source {self.path} (tasks {self.tasks}) has no records")
        return examples * self.repeat


def load_mixture(sources: list[DataSource]) -> list[Example]:
    """Concatenate sources (the shuffle mixes them)."""
    if not sources:
        raise ValueError("no data sources configured")
    out: list[Example] = []
    for src in sources:
        out += src.load()
    return out


class ExampleOrder:
    """Deterministic order of a dataset over epochs, split across ranks.

    Args:
        n: dataset size.
        seed: shuffle seed.
        micro_batch_size: examples per rank per micro-step.
        grad_accum: micro-steps per optimizer step.
        world_size: number of ranks.
    """

    def __init__(self, n: int, seed: int, micro_batch_size: int, grad_accum: int, world_size: int) -> None:
        if n < 1:
            raise ValueError("empty dataset")
        self.n = n
        self.seed = seed
        self.mb = micro_batch_size
        self.ga = grad_accum
        self.world = world_size
        self._perms: dict[int, list[int]] = {}

    @property
    def global_batch(self) -> int:
        return self.mb * self.ga * self.world

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        perm = self._perms.get(epoch)
        if perm is None:
            perm = list(range(self.n))
            random.Random(f"{self.seed}:{epoch}").shuffle(perm)
            self._perms = {epoch: perm}  # keep one epoch in memory
        return perm[offset]

    def micro_batch(self, step: int, micro: int, rank: int) -> list[int]:
        """Dataset indices for optimizer step ``step`` (0-based), micro-step ``micro``, ``rank``.

        Within a step, micro-step ``m`` takes positions ``[m·W·mb, (m+1)·W·mb)`` of the step's
        block and rank ``r`` its ``r``-th slice, so one step covers the same ``global_batch``
        examples whatever the split into micro-batches, accumulation and ranks.
        """
        start = step * self.global_batch + (micro * self.world + rank) * self.mb
        return [self._index(p) for p in range(start, start + self.mb)]

    def epoch_of(self, step: int) -> float:
        return step * self.global_batch / self.n
