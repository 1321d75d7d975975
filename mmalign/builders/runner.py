"""The loop every builder runs: stream inputs, skip finished ids, build in batches, commit, summarise.

A builder is any object with ``name``, ``outputs`` (output names), ``record_id(rec, where)`` and
``build(items) -> list[Built | Exception]`` — one result per item, in order, so a batch can go to
an LLM endpoint concurrently. An item whose result is an exception (a
:class:`~mmalign.data.formats.RecordError`, ``ValueError``, ``KeyError``, ``OSError`` …) is written to
``errors.jsonl`` with its ``file:line`` and the reason; the run goes on.

Every record a builder produces for an output listed in its ``output_formats`` (output name →
record format: ``llava``, ``lrv``, ``povid`` …) is read back as the trainers read it and put
through the trainers' structural checks (:func:`mmalign.data.check.check_record`: roles, empty
answers, placeholders in answers, placeholders vs media, identical pairs, and — when the builder
has a ``media_root`` — media files). A source record with one failing output is an error entry
instead, so a builder never writes a record a trainer rejects.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from mmalign.builders.io import CommittedOutput, iter_inputs, write_summary
from mmalign.data.check import MediaChecker, check_record
from mmalign.data.formats import RecordError
from mmalign.utils import stable_seed


@dataclass
class Item:
    """One source record: where it is (``file:line``), its id, the record."""

    where: str
    id: str
    record: dict[str, Any]


@dataclass
class Built:
    """What one source record produced: records per output name, and counts by type."""

    outputs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


class Builder(Protocol):
    """What :func:`run_builder` needs of a builder."""

    name: str
    outputs: tuple[str, ...]

    def record_id(self, rec: Mapping[str, Any], where: str) -> str: ...

    def build(self, items: Sequence[Item]) -> list[Built | Exception]: ...


def record_rng(seed: int, builder: str, record_id: str) -> random.Random:
    """The random stream of one record: independent of order, batch and resume."""
    return random.Random(stable_seed(seed, builder, record_id))


def default_id(rec: Mapping[str, Any], where: str, keys: tuple[str, ...] = ("id", "image_id")) -> str:
    """The record's ``id`` (or ``image_id``) as a string; ``where`` when it has none."""
    for key in keys:
        value = rec.get(key)
        if isinstance(value, (str, int)) and str(value):
            return str(value)
    return where


def rejected_output(
    builder: Builder, item: Item, built: Built, media: MediaChecker | None = None
) -> str | None:
    """Why a trainer would reject one of ``built``'s records (None when none would be)."""
    formats: Mapping[str, str] = getattr(builder, "output_formats", {})
    media_root = getattr(builder, "media_root", None)
    for name, recs in built.outputs.items():
        if name not in formats:
            continue
        for rec in recs:
            issue = check_record(rec, formats[name], f"{item.where} → {name}", media_root, media)
            if issue is not None:
                return (
                    f"{item.where} (id {item.id}): its {name} record {issue.id!r} would be rejected "
                    f"by the trainers [{issue.reason}]: {issue.message}"
                )
    return None


def run_builder(
    builder: Builder,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    params: Mapping[str, Any],
    batch_size: int = 256,
    commit_every: int = 512,
    limit: int | None = None,
    progress: bool = True,
    fsync: bool = True,
) -> dict[str, Any]:
    """Run ``builder`` over ``inputs`` into ``out_dir``; resumable; returns (and writes) the summary.

    Args:
        params: the run's arguments (stored; a folder written with other arguments is refused).
        batch_size: items per :meth:`Builder.build` call.
        limit: stop after this many source records (counting finished ones); None = all.

    Returns:
        ``summary.json``'s content: ``counts`` by type (this run and all runs), ``skipped`` (ids
        finished earlier), ``duplicates`` (ids repeated in the input), ``errors``, records/s.
    """
    start = time.perf_counter()
    stats = {"processed": 0, "skipped": 0, "duplicates": 0, "errors": 0}
    run_counts: dict[str, int] = {}
    media = MediaChecker()
    with CommittedOutput(out_dir, builder.outputs, params, commit_every, fsync) as out:
        seen: set[str] = set()
        bar = tqdm(desc=builder.name, unit="rec", disable=not progress)

        def flush(batch: list[Item]) -> None:
            results = builder.build(batch) if batch else []
            if len(results) != len(batch):
                raise RuntimeError(f"{builder.name}: build returned {len(results)} results for {len(batch)}")
            for item, res in zip(batch, results, strict=True):
                if not isinstance(res, Exception) and (why := rejected_output(builder, item, res, media)):
                    res = RecordError(why)
                if isinstance(res, Exception):
                    reason = str(res)
                    if item.where not in reason:
                        reason = f"{item.where} (id {item.id}): {reason}"
                    out.add_error(item.id, item.where, reason)
                    stats["errors"] += 1
                else:
                    out.add(item.id, res.outputs, res.counts)
                    for k, v in res.counts.items():
                        run_counts[k] = run_counts.get(k, 0) + v
                    stats["processed"] += 1
            bar.update(len(batch))
            batch.clear()

        batch: list[Item] = []
        n_seen = 0
        for where, rec in _all_inputs(inputs):
            if limit is not None and n_seen >= limit:
                break
            n_seen += 1
            rid = where if isinstance(rec, Exception) else builder.record_id(rec, where)
            if rid in out.done:
                stats["skipped"] += 1
                continue
            if rid in seen:
                out.add_error(rid, where, f"{where}: duplicate id {rid!r} (first occurrence kept)")
                stats["duplicates"] += 1
                continue
            seen.add(rid)
            if isinstance(rec, Exception):
                out.add_error(rid, where, str(rec))
                stats["errors"] += 1
                continue
            batch.append(Item(where, rid, rec))
            if len(batch) >= batch_size:
                flush(batch)
        flush(batch)
        bar.close()
        out.commit()
        elapsed = time.perf_counter() - start
        summary = {
            "builder": builder.name,
            "inputs": [str(p) for p in inputs],
            "outputs": {n: str(out.path(n)) for n in out.names},
            **stats,
            "counts": run_counts,
            "total_counts": dict(out.counts),
            "total_errors": out.n_errors,
            "elapsed_s": round(elapsed, 3),
            "records_per_s": round((stats["processed"] + stats["errors"]) / elapsed, 1) if elapsed else None,
        }
    write_summary(out_dir, summary)
    return summary


def _all_inputs(inputs: Iterable[str | Path]) -> Iterable[tuple[str, dict[str, Any] | RecordError]]:
    for path in inputs:
        yield from iter_inputs(path)


def format_summary(summary: Mapping[str, Any]) -> str:
    """A few human-readable lines of a summary."""
    lines = [
        f"[{summary['builder']}] {summary['processed']} records built, {summary['skipped']} already done, "
        f"{summary['errors']} errors, {summary['duplicates']} duplicate ids "
        f"({summary['records_per_s']} rec/s, {summary['elapsed_s']} s)",
        "  this run: " + ", ".join(f"{k}={v}" for k, v in sorted(summary["counts"].items())),
        "  all runs: " + ", ".join(f"{k}={v}" for k, v in sorted(summary["total_counts"].items())),
    ]
    if summary["total_errors"]:
        lines.append(f"  error report: {summary['outputs']['errors']} ({summary['total_errors']} entries)")
    return "\n".join(lines)
