"""Align²LLaVA's curation passes as resumable builders: score every record, select, rewrite the kept ones.

1. :class:`ScoreBuilder` — ``scores.jsonl``: ``{id, q_score, a_score}`` per LLaVA record (f_Q on
   ``(image, question)`` as the response to :data:`~mmalign.builders.align2llava.QUESTION_PROMPT`;
   g_A on ``(image, question, answer)``).
2. :func:`select_records` — the cascade over all scores (a global ranking, so it runs after step 1)
   → ``selected.jsonl`` (the kept records with their scores), written atomically.
3. :class:`RewriteBuilder` — ``curated.jsonl``: each kept record, its answer rewritten by the inner
   LLM (``inner``: the LMM's own LLM, text only; ``llm``: an endpoint; ``none``: kept as is); a
   rewrite that fails :func:`~mmalign.builders.align2llava.meaning_preserved` is rejected and the
   original answer kept (``rewrite: {status, reason}``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from mmalign.builders.align2llava import (
    QUESTION_PROMPT,
    Scored,
    cascade_select,
    encode_one,
    llava_prompt,
    meaning_preserved,
    rewards,
)
from mmalign.builders.io import iter_inputs, read_jsonl
from mmalign.builders.llm_backend import LLMBackend, Request, load_prompt
from mmalign.builders.runner import Built, Item, default_id
from mmalign.data.formats import Example, RecordError
from mmalign.data.processor import MultimodalProcessor
from mmalign.preference.reward_model import RewardModel
from mmalign.training.generation import generate_responses
from mmalign.utils import atomic_write

RewriteBackend = Literal["none", "inner", "llm"]


class ScoreBuilder:
    """f_Q and g_A rewards of every record (errors: bad schema, missing or unreadable image)."""

    name = "align2llava_score"
    outputs = ("scores",)

    def __init__(
        self,
        question_rm: tuple[RewardModel, MultimodalProcessor],
        answer_rm: tuple[RewardModel, MultimodalProcessor],
        media_root: str | Path,
        batch_size: int = 64,
    ) -> None:
        self.q, self.a = question_rm, answer_rm
        self.root = Path(media_root)
        self.batch_size = batch_size

    def record_id(self, rec: Mapping[str, Any], where: str) -> str:
        return default_id(rec, where)

    def build(self, items: Sequence[Item]) -> list[Built | Exception]:
        out: list[Built | Exception] = []
        q_enc, a_enc, live = [], [], []
        for k, item in enumerate(items):
            try:
                ex, question, answer = llava_prompt(item.record, self.root, item.where)
                for path in ex.images:
                    if not path.is_file():
                        raise RecordError(f"{item.where}: image not found: {path}")
                q_ex = Example(
                    ex.id,
                    [{"role": "user", "content": "<image>\n" * len(ex.images) + QUESTION_PROMPT}],
                    ex.images,
                )
                q_enc.append(encode_one(self.q[1], q_ex, question))
                a_enc.append(encode_one(self.a[1], ex, answer))
                live.append(k)
                out.append(RecordError("unscored"))
            except (RecordError, ValueError, KeyError, TypeError, OSError) as exc:
                out.append(exc)
        q_scores = rewards(self.q[0], self.q[1], q_enc, self.batch_size)
        a_scores = rewards(self.a[0], self.a[1], a_enc, self.batch_size)
        for k, qs, as_ in zip(live, q_scores, a_scores, strict=True):
            rec = {"id": items[k].id, "q_score": round(qs, 6), "a_score": round(as_, 6)}
            out[k] = Built({"scores": [rec]}, {"scored": 1})
        return out


def select_records(
    inputs: Sequence[str | Path],
    scores_path: str | Path,
    out_path: str | Path,
    keep: float,
    question_keep: float,
) -> dict[str, Any]:
    """Run the cascade over every scored record; write the kept records (with scores) to ``out_path``."""
    scores = {r["id"]: r for r in read_jsonl(scores_path)}
    records, scored, seen = [], [], set()
    for path in inputs:
        for where, rec in iter_inputs(path):
            if isinstance(rec, Exception):
                continue
            rid = default_id(rec, where)
            if rid in scores and rid not in seen:
                seen.add(rid)
                s = scores[rid]
                scored.append(Scored(len(records), s["q_score"], s["a_score"]))
                records.append(
                    {**rec, "id": rid, "align2llava": {"q_score": s["q_score"], "a_score": s["a_score"]}}
                )
    kept = cascade_select(scored, keep, question_keep)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out_path, "".join(json.dumps(records[i]) + "\n" for i in kept).encode())
    return {
        "scored": len(records),
        "kept": len(kept),
        "kept_fraction": len(kept) / len(records) if records else 0.0,
    }


class RewriteBuilder:
    """Rewrites kept answers in the inner LLM's style; rejected rewrites keep the original answer."""

    name = "align2llava_rewrite"
    outputs = ("curated",)
    output_formats = {"curated": "llava"}  # every written record passes the trainers' checks

    def __init__(
        self,
        backend: RewriteBackend = "none",
        inner: tuple[Any, MultimodalProcessor] | None = None,
        llm: LLMBackend | None = None,
        prompt: str = "align2llava_rewrite",
        max_new_tokens: int = 96,
    ) -> None:
        if backend == "inner" and inner is None:
            raise ValueError("backend 'inner' needs the model and processor")
        if backend == "llm" and llm is None:
            raise ValueError("backend 'llm' needs an LLM endpoint")
        self.backend, self.inner, self.llm = backend, inner, llm
        self.template = load_prompt(prompt)
        self.max_new_tokens = max_new_tokens

    def record_id(self, rec: Mapping[str, Any], where: str) -> str:
        return default_id(rec, where)

    def _rewrites(self, texts: list[str]) -> list[str | None]:
        if self.backend == "none":
            return [None] * len(texts)
        if self.backend == "llm":
            return self.llm.ask_many([Request(t) for t in texts], lambda s: s.strip())  # type: ignore[union-attr]
        model, processor = self.inner  # type: ignore[misc]
        examples = [Example(f"rewrite{i}", [{"role": "user", "content": t}]) for i, t in enumerate(texts)]
        return generate_responses(model, processor, examples, max_new_tokens=self.max_new_tokens)

    def build(self, items: Sequence[Item]) -> list[Built | Exception]:
        out: list[Built | Exception] = []
        prompts, live = [], []
        for k, item in enumerate(items):
            convs = item.record.get("conversations")
            if (
                not isinstance(convs, list)
                or len(convs) < 2
                or not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in convs)
            ):
                out.append(RecordError(f"{item.where}: needs conversations [human, gpt] with string values"))
                continue
            question = convs[-2]["value"].replace("<image>", "").strip()
            prompts.append(self.template.format(question=question, answer=convs[-1]["value"]))
            live.append(k)
            out.append(RecordError("pending"))
        rewritten = self._rewrites(prompts)
        for k, new in zip(live, rewritten, strict=True):
            rec = dict(items[k].record)
            answer = rec["conversations"][-1]["value"]
            if new is None and self.backend == "none":
                status, reason = "kept", ""
            elif new is None:
                status, reason = "rejected", "no valid reply"
            else:
                ok, reason = meaning_preserved(answer, new)
                status = "accepted" if ok else "rejected"
                if ok:
                    rec["conversations"] = [
                        *rec["conversations"][:-1],
                        {**rec["conversations"][-1], "value": new.strip()},
                    ]
            rec["rewrite"] = {
                "status": status,
                "reason": reason,
                **({"proposed": new} if new is not None and status == "rejected" else {}),
            }
            out[k] = Built({"curated": [rec]}, {f"rewrite_{status}": 1})
        return out
