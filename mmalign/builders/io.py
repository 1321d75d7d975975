"""Streaming input, resumable committed output, error reports and summaries shared by every builder.

Input: :func:`iter_inputs` streams JSONL line by line (a JSON list is read whole) and yields
``(where, record_or_error)`` so that one bad line becomes an entry of the error report instead of
stopping the run.

Output: :class:`CommittedOutput` appends records to one or more JSONL files and, every
``commit_every`` source records, flushes (and fsyncs) them and appends one line to a progress log
``.progress.jsonl`` holding the finished source ids and the byte length of every output file. On
open, a previous run's outputs are truncated back to the last committed lengths — so a kill at any
moment (even inside a write) leaves no partial record, and the ids listed in the log are skipped:
a resumed run writes no duplicate. Source records with an error are committed like finished ones
(their report line is an output too), so a resumed run does not report them twice.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mmalign.data.formats import RecordError, iter_json_records
from mmalign.utils import atomic_write

PROGRESS = ".progress.jsonl"
PARAMS = "params.json"
ERRORS = "errors"


def iter_inputs(path: str | Path) -> Iterator[tuple[str, dict[str, Any] | RecordError]]:
    """Yield ``(where, record)`` per record; an unreadable JSONL line yields ``(where, RecordError)``.

    ``where`` is ``file:line`` (JSONL) or ``file[index]`` (JSON list). A JSON list that does not
    parse, or a missing file, raises (nothing of it can be read).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    with path.open("rb") as f:
        head = f.read(64).lstrip()
    if head.startswith(b"["):
        yield from iter_json_records(path)
        return
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                yield where, RecordError(f"{where}: invalid JSON: {getattr(exc, 'msg', exc)}")
                continue
            if not isinstance(rec, dict):
                yield where, RecordError(f"{where}: record is not a JSON object")
                continue
            yield where, rec


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _dumps(rec: Mapping[str, Any]) -> str:
    return _ENCODER.encode(rec) + "\n"


class CommittedOutput:
    """Resumable, crash-safe JSONL outputs of one builder run (see module docstring).

    Args:
        out_dir: folder of the outputs (created).
        names: output names; each is written to ``out_dir/<name>.jsonl``. ``errors`` is added.
        params: the builder's arguments; a folder written with other params is refused.
        commit_every: source records per commit.
        fsync: fsync outputs and the log at each commit (survives power loss, not only kills).
    """

    def __init__(
        self,
        out_dir: str | Path,
        names: tuple[str, ...],
        params: Mapping[str, Any],
        commit_every: int = 512,
        fsync: bool = True,
    ) -> None:
        if commit_every < 1:
            raise ValueError("commit_every must be ≥ 1")
        self.dir = Path(out_dir)
        self.names = tuple(dict.fromkeys((*names, ERRORS)))
        self.commit_every = commit_every
        self.fsync = fsync
        self.dir.mkdir(parents=True, exist_ok=True)
        self._check_params(dict(params))
        self.done: set[str] = set()
        self.counts: Counter[str] = Counter()
        self.n_errors = 0
        self._recover()
        self._files = {n: open(self.path(n), "ab") for n in self.names}  # noqa: SIM115
        self._log = open(self.dir / PROGRESS, "ab")  # noqa: SIM115
        self._buf: dict[str, list[str]] = {n: [] for n in self.names}
        self._pending_ids: list[str] = []
        self._pending_counts: Counter[str] = Counter()
        self._pending_errors = 0

    def path(self, name: str) -> Path:
        """The JSONL file of output ``name``."""
        return self.dir / f"{name}.jsonl"

    def _check_params(self, params: dict[str, Any]) -> None:
        path = self.dir / PARAMS
        params = json.loads(json.dumps(params))
        if path.exists():
            old = json.loads(path.read_text())
            if old != params:
                keys = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
                raise FileExistsError(
                    f"{self.dir} holds a run with different arguments (differs in {keys}); "
                    "use another output folder or delete it"
                )
        else:
            atomic_write(path, json.dumps(params, indent=2).encode())

    def _recover(self) -> None:
        """Read the progress log, drop a torn last line, cut outputs back to the committed lengths."""
        log = self.dir / PROGRESS
        lengths = {n: 0 for n in self.names}
        good = 0
        if log.exists():
            data = log.read_bytes()
            pos = 0
            while True:
                end = data.find(b"\n", pos)
                if end < 0:
                    break
                try:
                    entry = json.loads(data[pos:end])
                except json.JSONDecodeError:
                    break
                self.done.update(entry["ids"])
                self.counts.update(entry["counts"])
                self.n_errors += entry["errors"]
                lengths.update(entry["lengths"])
                pos = good = end + 1
            if good != len(data):
                os.truncate(log, good)
        for name in self.names:
            path = self.path(name)
            size = path.stat().st_size if path.exists() else 0
            if size < lengths.get(name, 0):
                raise RuntimeError(
                    f"{path} is shorter than its committed length: the folder was tampered with"
                )
            if size > lengths.get(name, 0):
                os.truncate(path, lengths[name])

    def add(
        self, source_id: str, outputs: Mapping[str, list[dict[str, Any]]], counts: Mapping[str, int]
    ) -> None:
        """Buffer the outputs of one source record; commits every ``commit_every`` records."""
        for name, recs in outputs.items():
            self._buf[name].extend(_dumps(r) for r in recs)
        self._pending_ids.append(source_id)
        self._pending_counts.update(counts)
        if len(self._pending_ids) >= self.commit_every:
            self.commit()

    def add_error(self, source_id: str, where: str, reason: str) -> None:
        """Report a bad source record (its line and reason) and mark it finished."""
        self._buf[ERRORS].append(_dumps({"where": where, "id": source_id, "reason": reason}))
        self._pending_ids.append(source_id)
        self._pending_errors += 1
        if len(self._pending_ids) >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        """Write buffered records, then the log line that makes them count (crash-safe order)."""
        if not self._pending_ids:
            return
        lengths = {}
        for name, f in self._files.items():
            if self._buf[name]:
                f.write("".join(self._buf[name]).encode())
                self._buf[name].clear()
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
            lengths[name] = f.tell()
        entry = {
            "ids": self._pending_ids,
            "counts": dict(self._pending_counts),
            "errors": self._pending_errors,
            "lengths": lengths,
        }
        self._log.write(_dumps(entry).encode())
        self._log.flush()
        if self.fsync:
            os.fsync(self._log.fileno())
        self.done.update(self._pending_ids)
        self.counts.update(self._pending_counts)
        self.n_errors += self._pending_errors
        self._pending_ids, self._pending_counts, self._pending_errors = [], Counter(), 0

    def close(self) -> None:
        """Commit what is buffered and close the files."""
        self.commit()
        for f in self._files.values():
            f.close()
        self._log.close()

    def __enter__(self) -> CommittedOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_summary(out_dir: str | Path, summary: Mapping[str, Any]) -> Path:
    """Write ``summary.json`` atomically."""
    path = Path(out_dir) / "summary.json"
    atomic_write(path, json.dumps(summary, indent=2).encode())
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSONL file (for tests and small post-processing)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
