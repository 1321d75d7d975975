"""Training data: sources of LLaVA records, mixtures, and a deterministic, resumable order.

The order of examples is a pure function of ``(seed, position)``: position ``p`` of the stream is
example ``perm_e[p mod n]`` of epoch ``e = p div n``, each epoch shuffled with its own seed. A run
resumed at optimizer step ``s`` therefore sees exactly the examples an uninterrupted run would,
and every rank computes its share without communication.

Optional length grouping (LLaVA's ``group_by_modality_length``, done deterministically): the
stream is cut into blocks of ``group`` global batches; each block is sorted by example length,
cut back into ``group`` global batches, and those are visited in a seeded random order. Every
example is still seen once per epoch, but a batch no longer pads 30-token answers to the length of
a 100-token caption (or a video), which on the tiny preset roughly halves the tokens computed.

``group == 1`` sorts only *within* each optimizer step: a step trains on exactly the examples it
would without grouping (the same task mixture), and only their split into micro-batches (and
ranks) follows length. Use it with ``grad_accum`` > 1 to cut padding without the one-task
batches of block grouping.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from mmalign.data.formats import RECORD_FORMATS, Example, load_records


@dataclass
class DataSource:
    """One file of SFT records (LLaVA or LRV-Instruction, :mod:`mmalign.data.formats`).

    Attributes:
        path: JSON or JSONL file.
        media_root: folder the media paths are relative to (default: the file's folder); for
            LRV, the folder holding ``<image_id>.jpg``.
        tasks: keep only records whose ``task`` field is one of these (ShapeWorld records carry
            one); ``None`` keeps all.
        max_records: keep at most this many (after filtering, in file order).
        repeat: how many times the source appears in the mixture (upsampling).
        format: ``llava``, ``lrv`` (``{image_id, question, answer}``) or ``auto`` (per record).
    """

    path: str
    media_root: str | None = None
    tasks: list[str] | None = None
    max_records: int | None = None
    repeat: int = 1
    format: str = "auto"

    def __post_init__(self) -> None:
        if self.repeat < 1:
            raise ValueError(f"repeat must be ≥ 1, got {self.repeat}")
        if self.format != "auto" and self.format not in RECORD_FORMATS:
            raise ValueError(f"format must be auto or one of {RECORD_FORMATS}, got {self.format!r}")

    def load(self) -> list[Example]:
        examples = load_records(self.path, self.media_root, self.format)  # type: ignore[arg-type]
        if self.tasks is not None:
            wanted = set(self.tasks)
            examples = [e for e in examples if e.meta.get("task") in wanted]
        if self.max_records is not None:
            examples = examples[: self.max_records]
        if not examples:
            raise ValueError(f"data source {self.path} (tasks {self.tasks}) has no records")
        return examples * self.repeat


def length_hint(example: Example, image_tokens: int, video_tokens: int) -> int:
    """A cheap length estimate for grouping: ~4 characters per token plus the media tokens."""
    chars = sum(len(m["content"]) for m in example.messages)
    return chars // 4 + image_tokens * len(example.images) + video_tokens * len(example.videos)


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
        lengths: per-example lengths (e.g. :func:`length_hint`), needed when ``group`` ≥ 1.
        group: global batches per length-sorted block; 0 = no grouping; 1 = sort within each
            optimizer step only (same examples per step as without grouping).
    """

    def __init__(
        self,
        n: int,
        seed: int,
        micro_batch_size: int,
        grad_accum: int,
        world_size: int,
        lengths: Sequence[int] | None = None,
        group: int = 0,
    ) -> None:
        if n < 1:
            raise ValueError("empty dataset")
        if group >= 1 and (lengths is None or len(lengths) != n):
            raise ValueError(f"length grouping needs one length per example ({n})")
        self.lengths = list(lengths) if group >= 1 and lengths is not None else None
        self.group = group if self.lengths is not None else 0
        self._block: tuple[int, list[list[int]]] | None = None
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
        offset = (micro * self.world + rank) * self.mb
        if not self.group:
            start = step * self.global_batch + offset
            return [self._index(p) for p in range(start, start + self.mb)]
        if self.group == 1:
            return self._sorted_step(step)[offset : offset + self.mb]
        return self._grouped_batch(step)[offset : offset + self.mb]

    def _sorted_step(self, step: int) -> list[int]:
        """``step``'s ungrouped global batch, sorted by length (micro-step ``m`` gets the m-th
        shortest ``W·mb`` examples, split over ranks)."""
        if self._block is None or self._block[0] != step:
            g = self.global_batch
            idx = [self._index(p) for p in range(step * g, (step + 1) * g)]
            assert self.lengths is not None
            idx.sort(key=lambda i: self.lengths[i])  # stable
            self._block = (step, [idx])
        return self._block[1][0]

    def _grouped_batch(self, step: int) -> list[int]:
        """The dataset indices of ``step``'s global batch under length grouping."""
        block, within = divmod(step, self.group)
        if self._block is None or self._block[0] != block:
            g = self.global_batch
            start = block * self.group * g
            idx = [self._index(p) for p in range(start, start + self.group * g)]
            assert self.lengths is not None
            idx.sort(key=lambda i: self.lengths[i])  # stable: ties keep the shuffled order
            batches = [idx[k * g : (k + 1) * g] for k in range(self.group)]
            rng = random.Random(f"{self.seed}:group:{block}")
            rng.shuffle(batches)
            for b in batches:  # spread lengths over ranks and micro-steps
                rng.shuffle(b)
            self._block = (block, batches)
        return self._block[1][within]

    def epoch_of(self, step: int) -> float:
        return step * self.global_batch / self.n
