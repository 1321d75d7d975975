"""Reference log-probs computed once before training and cached on disk.

The reference policy is the start checkpoint, so its log-probs of every (prompt, response) are
fixed: one no-grad pass over the data replaces a reference forward at every step, and the
reference model need not be held during training. Entries are keyed by a SHA-256 over

* the reference model's fingerprint (:func:`model_fingerprint`: its config and weight files),
* the compute precision,
* the exact token ids of prompt and responses (so template, tokenizer, truncation count),
* the bytes of every image/video file of the pair,

so a changed image file, template or checkpoint misses the cache instead of silently reusing
stale values. The cache is a folder of JSONL shards (one per rank and run); each line is
``{"key": ..., "logps": [chosen, rejected, ...]}`` plus, when the scorer returned them,
``"token_logps": [[per-token of chosen], [of rejected], ...]`` (what per-token KL terms and
i-SRT's pairs need).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from mmalign.preference.batch import EncodedPair
from mmalign.preference.formats import PreferencePair

_HEAD_TAIL = 1 << 20

#: What a scorer returns for P pairs: summed log-probs ``(P, K)``, optionally with the per-token
#: log-probs ``[pair][response] -> (n,)``.
Scores = torch.Tensor | tuple[torch.Tensor, Sequence[Sequence[torch.Tensor]]]


def _hash_file(h: hashlib._Hash, path: Path, full: bool = True) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}:".encode())
    with path.open("rb") as f:
        if full or size <= 2 * _HEAD_TAIL:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(f.read(_HEAD_TAIL))
            f.seek(size - _HEAD_TAIL)
            h.update(f.read(_HEAD_TAIL))


def model_fingerprint(directory: str | Path) -> str:
    """SHA-256 over a checkpoint folder: small files in full, weight files by name, size and their
    first and last MiB (hashing 14 GB of weights at every start would cost minutes)."""
    directory = Path(directory)
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(directory)).encode())
        _hash_file(h, path, full=path.stat().st_size <= 2 * _HEAD_TAIL)
    return h.hexdigest()


def pair_key(encoded: EncodedPair, pair: PreferencePair, model_id: str, precision: str) -> str:
    """The cache key of one encoded pair (see module docstring)."""
    h = hashlib.sha256()
    h.update(f"{model_id}|{precision}|".encode())
    h.update(json.dumps([encoded.prompt_ids, encoded.responses, encoded.scored]).encode())
    for path in [*pair.images, *pair.videos]:
        _hash_file(h, Path(path), full=True)
    return h.hexdigest()


class ReferenceCache:
    """Reference log-probs by key, backed by JSONL shards in ``directory``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.values: dict[str, list[float]] = {}
        self.tokens: dict[str, list[list[float]]] = {}
        self.reload()

    def reload(self) -> None:
        """Read every shard (later lines win).

        Raises:
            ValueError: a line that is not a cache entry (names ``shard:line``).
        """
        self.values, self.tokens = {}, {}
        if not self.directory.exists():
            return
        for shard in sorted(self.directory.glob("*.jsonl")):
            for lineno, line in enumerate(shard.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    self.values[entry["key"]] = [float(v) for v in entry["logps"]]
                    if "token_logps" in entry:
                        self.tokens[entry["key"]] = [[float(v) for v in r] for r in entry["token_logps"]]
                    else:
                        self.tokens.pop(entry["key"], None)
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"{shard}:{lineno}: bad reference-cache line ({exc})") from exc

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def __len__(self) -> int:
        return len(self.values)

    def get(self, keys: list[str]) -> torch.Tensor:
        """``(P, K)`` float32 log-probs of these keys (KeyError names the first missing one)."""
        missing = [k for k in keys if k not in self.values]
        if missing:
            raise KeyError(f"{len(missing)} pair(s) have no cached reference log-probs, e.g. {missing[0]}")
        return torch.tensor([self.values[k] for k in keys], dtype=torch.float32)

    def get_tokens(self, keys: list[str]) -> list[list[torch.Tensor]]:
        """Per-token float32 log-probs ``[pair][response] -> (n,)`` of these keys.

        Raises:
            KeyError: a key without per-token values (not cached, or cached as sums only).
        """
        missing = [k for k in keys if k not in self.tokens]
        if missing:
            raise KeyError(
                f"{len(missing)} pair(s) have no cached per-token reference log-probs, e.g. {missing[0]}"
            )
        return [[torch.tensor(r, dtype=torch.float32) for r in self.tokens[k]] for k in keys]

    def append(
        self,
        shard: str,
        entries: Iterable[tuple[str, list[float]] | tuple[str, list[float], list[list[float]] | None]],
    ) -> None:
        """Add ``(key, logps)`` or ``(key, logps, token_logps)`` entries to shard ``<shard>.jsonl``
        (flushed and fsynced)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{shard}.jsonl"
        with path.open("a") as f:
            for key, logps, *rest in entries:
                entry: dict = {"key": key, "logps": list(logps)}
                tokens = rest[0] if rest else None
                if tokens is not None:
                    entry["token_logps"] = [list(r) for r in tokens]
                    self.tokens[key] = entry["token_logps"]
                f.write(json.dumps(entry) + "\n")
                self.values[key] = list(logps)
            f.flush()
            os.fsync(f.fileno())


def precompute(
    cache: ReferenceCache,
    keys: list[str],
    score: Callable[[list[int]], Scores],
    batch_size: int,
    rank: int,
    world_size: int,
    shard: str,
) -> int:
    """Fill the cache for every key not in it; returns how many pairs this rank scored.

    The missing indices are split round-robin over ranks and each rank runs the **same number**
    of batches (the last ones padded with repeats of its first index), as ZeRO-3 requires every
    rank to run every forward. ``score(indices)`` returns ``(len(indices), K)`` summed log-probs,
    or those and the per-token log-probs ``[pair][response] -> (n,)`` (then cached as well).
    Every rank must have read the same cache state before the call (a barrier after loading it) and
    calls :meth:`ReferenceCache.reload` after a barrier that follows it.
    """
    todo, seen = [], set()
    for i, key in enumerate(keys):
        if key not in cache and key not in seen:
            seen.add(key)
            todo.append(i)
    mine = todo[rank::world_size]
    per_rank = -(-len(todo) // world_size) if todo else 0
    n_batches = -(-per_rank // batch_size) if per_rank else 0
    done = 0
    for b in range(n_batches):
        idx = mine[b * batch_size : (b + 1) * batch_size]
        real = len(idx)
        filler = idx[0] if idx else (mine[0] if mine else (todo[0] if todo else 0))
        idx = idx + [filler] * (batch_size - real)
        scores = score(idx)
        sums, tokens = scores if isinstance(scores, tuple) else (scores, None)
        logps = sums.float().cpu()
        cache.append(
            shard,
            (
                (keys[i], logps[j].tolist(), None if tokens is None else [t.tolist() for t in tokens[j]])
                for j, i in enumerate(idx[:real])
            ),
        )
        done += real
    return done
