"""Stages 1–4 of an i-SRT iteration: sample, context, judge, pairs (each resumable, see
:mod:`mmalign.isrt.store`; every artefact under ``out/iter_{t}/``).

1. ``samples`` — K responses per (video, question) at ``temperature``/``top_p``, seeded by
   ``stable_seed(seed, t, id, try)``; identical samples are resampled (``resample_tries``
   rounds, in lockstep over ranks) and then dropped and counted. The K samples are scored in one
   shared-prefix forward of π_t: these are the reference log-probs of ``reference_model:
   previous``.
2. ``contexts`` — per video, ``c_t = π_t(V, c_{t−1})`` with the revise prompt (``retrospective``;
   c_{t−1} is the video's latest context, from the last iteration that drew it), or from the
   describe prompt (``fresh``, and c_0); nothing for ``none``.
3. ``judgements`` — :mod:`mmalign.isrt.judges` (self / llm / oracle), both orders, ties dropped.
4. ``pairs`` — LLaVA-Hound records ``{id, video, prompt, chosen, rejected}`` plus ``iteration``,
   ``judge_margin``, ``context``, ``lengths``, ``ref_logps`` (and the token ids DPO trains on).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mmalign.isrt.config import ISRTConfig
from mmalign.isrt.judges import Judge, oracle_view
from mmalign.isrt.policy import FrozenPolicy
from mmalign.isrt.prompts import PoolRecord, describe_text, frames_digest, user_turn
from mmalign.isrt.store import StageStore, any_rank, lockstep, todo_shard
from mmalign.models.decoding import GenerationConfig
from mmalign.preference.batch import group_from_ids
from mmalign.utils import stable_seed


def _run(
    policy_or_strategy: Any, store: StageStore, ids: list[str], work: Callable[[str | None], dict | None],
    size: int = 1,
) -> None:  # fmt: skip
    """Run ``work`` over this rank's ids not yet written, in lockstep (``None``: a filler run)."""
    strategy = getattr(policy_or_strategy, "strategy", policy_or_strategy)
    store.open()
    strategy.barrier()  # every rank reads the shards before any rank appends
    done = set(store.read())
    mine = todo_shard(ids, done, strategy.rank, strategy.world_size)
    for chunk in lockstep(strategy, mine, size):
        if not chunk:
            work(None)
            continue
        out = [work(i) for i in chunk]
        store.append([r for r in out if r is not None])
    strategy.barrier()  # every shard is complete before rank 0 counts


def _has_twins(ids: list[list[int]]) -> bool:
    return len({tuple(r) for r in ids}) < len(ids)


# ------------------------------------------------------------------------------------ 1. samples
def sample_stage(
    policy: FrozenPolicy, cfg: ISRTConfig, records: list[PoolRecord], directory: Path, t: int
) -> dict:
    """Stage 1 (module docstring); returns the stage's counts."""
    s = policy.strategy
    store = StageStore(directory, "samples", s.rank)
    if store.is_done():
        return store.stats()
    by_id = {r.id: r for r in records}
    gen_cfg = GenerationConfig(
        max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p
    )

    def work(rid: str | None) -> dict | None:
        rec = by_id[rid] if rid is not None else records[0]  # a filler runs the same forwards
        feats = policy.clips.prompt_features(rec.id, user_turn(rec.question), rec.video)
        gen = policy.generate([feats], gen_cfg, cfg.num_samples, stable_seed(cfg.seed, t, rec.id, 0))
        resampled = 0
        for attempt in range(1, cfg.resample_tries + 1):
            twins = rid is not None and _has_twins(gen.ids)
            if not any_rank(s, twins):
                break
            again = policy.generate(
                [feats], gen_cfg, cfg.num_samples, stable_seed(cfg.seed, t, rec.id, attempt)
            )
            if twins:
                gen, resampled = again, attempt
        group = group_from_ids(rec.id, feats["input_ids"], gen.ids, None, feats["videos"])
        sums, tokens = policy.score([group])
        if rid is None:
            return None
        samples = [
            {"text": text, "ids": ids, "finished": fin, "logp": float(sums[0, k]),
             "token_logps": [round(float(v), 6) for v in tokens[0][k]]}
            for k, (text, ids, fin) in enumerate(zip(gen.texts, gen.ids, gen.finished, strict=True))
        ]  # fmt: skip
        return {
            "id": rec.id, "video": rec.video_key, "question": rec.question, "iteration": t,
            "prompt_ids": list(feats["input_ids"]), "samples": samples, "resampled": resampled,
            "dropped": _has_twins(gen.ids), "frames": frames_digest(feats["videos"]),
        }  # fmt: skip

    _run(policy, store, [r.id for r in records], work)
    rows = list(store.read().values()) if s.is_main else []
    lengths = [len(x["ids"]) for r in rows for x in r["samples"]]
    store.finish(s, {
        "prompts": len(rows), "dropped_identical": sum(r["dropped"] for r in rows),
        "resampled": sum(bool(r["resampled"]) for r in rows),
        "response_length": sum(lengths) / max(len(lengths), 1),
        "finished": sum(x["finished"] for r in rows for x in r["samples"]) / max(len(lengths), 1),
    })  # fmt: skip
    return store.stats()


# ------------------------------------------------------------------------------------ 2. contexts
def latest_contexts(previous_dirs: Sequence[Path]) -> dict[str, dict]:
    """Each video's most recent context over earlier iterations' ``contexts`` stores (oldest
    first): with ``pool.per_iteration`` a video need not be drawn every iteration, and its
    c_{t−1} is then the context of the last iteration that drew it, not a fresh description."""
    latest: dict[str, dict] = {}
    for d in previous_dirs:
        latest.update(StageStore(d, "contexts").read())
    return latest


def context_stage(
    policy: FrozenPolicy, cfg: ISRTConfig, records: list[PoolRecord], directory: Path, t: int,
    previous_dirs: Sequence[Path] = (),
) -> dict:  # fmt: skip
    """Stage 2: one context per video of the iteration's prompts (``{id: video, context, source}``).

    ``previous_dirs``: the folders of iterations 0 … t − 1 (oldest first); ``retrospective``
    revises each video's latest context among them (:func:`latest_contexts`)."""
    s = policy.strategy
    store = StageStore(directory, "contexts", s.rank)
    if store.is_done():
        return store.stats()
    if cfg.context == "none":
        store.finish(s, {"mode": "none", "contexts": 0})
        return store.stats()
    previous: dict[str, dict] = {}
    if cfg.context == "retrospective":
        previous = latest_contexts(previous_dirs)
    videos: dict[str, PoolRecord] = {}
    for r in records:
        videos.setdefault(r.video_key, r)
    greedy = cfg.context_temperature <= 0
    gen_cfg = GenerationConfig(
        max_new_tokens=cfg.context_max_new_tokens, do_sample=not greedy,
        temperature=1.0 if greedy else cfg.context_temperature,
    )  # fmt: skip

    def work(key: str | None) -> dict | None:
        rec = videos[key] if key is not None else records[0]
        prev = previous.get(rec.video_key, {}).get("context")
        feats = policy.clips.prompt_features(rec.id, user_turn(describe_text(cfg, prev)), rec.video)
        gen = policy.generate([feats], gen_cfg, 1, stable_seed(cfg.seed, t, rec.video_key, "context"))
        if key is None:
            return None
        source = "revise" if prev is not None else "describe"
        return {
            "id": key, "context": gen.texts[0], "source": source, "previous": prev, "iteration": t,
            "frames": frames_digest(feats["videos"]),
        }  # fmt: skip

    _run(policy, store, list(videos), work)
    rows = list(store.read().values()) if s.is_main else []
    store.finish(s, {
        "mode": cfg.context, "contexts": len(rows), "revised": sum(r["source"] == "revise" for r in rows),
        "context_length": sum(len(r["context"].split()) for r in rows) / max(len(rows), 1),
    })  # fmt: skip
    return store.stats()


# ------------------------------------------------------------------------------------ 3. judgements
def judge_stage(
    judge: Judge, strategy: Any, cfg: ISRTConfig, records: list[PoolRecord], directory: Path, t: int
) -> dict:
    """Stage 3: a judgement per kept sample record (ties recorded with their reason)."""
    store = StageStore(directory, "judgements", strategy.rank)
    if store.is_done():
        return store.stats()
    samples = StageStore(directory, "samples").read()
    contexts = StageStore(directory, "contexts").read()
    by_id = {r.id: r for r in records}
    kept = [r.id for r in records if r.id in samples and not samples[r.id]["dropped"]]

    def work(rid: str | None) -> dict | None:
        sample = samples[rid] if rid is not None else samples[kept[0]] if kept else None
        if sample is None:
            return None
        rec = by_id[sample["id"]]
        ctx = contexts.get(rec.video_key, {}).get("context") if cfg.context != "none" else None
        verdict = judge.judge(rec, [x["text"] for x in sample["samples"]], ctx, real=rid is not None)
        if rid is None:
            return None
        truth = oracle_view(rec, [x["text"] for x in sample["samples"]])
        return {"id": rid, "iteration": t, "context": ctx, "oracle": truth, **verdict}

    _run(strategy, store, kept, work)
    rows = list(store.read().values()) if strategy.is_main else []
    store.finish(strategy, judge_stats(rows))
    return store.stats()


def judge_stats(rows: list[dict]) -> dict[str, Any]:
    """Ties by reason and, where the exact truth decides, agreement of the judge with the oracle.

    ``oracle_agreement``: share of the judge's decided pairs (not ties) on records where the oracle
    is decisive (one answer right, one wrong) that pick the right answer; ``oracle_coverage``: share
    of oracle-decisive records the judge decided (did not tie); ``margin_agreement``: over every
    compared pair of one right and one wrong answer (ties included), the share whose mean margin
    over both orders favours the right one — the letter-position bias cancels in that mean, so
    it reads a biased judge's content preference that tie dropping hides (``margin_pairs``: how
    many; a zero margin counts as disagreement).
    """
    ties = [r for r in rows if r["tie"]]
    decisive = [r for r in rows if r.get("oracle") and r["oracle"]["preferred"] is not None]
    decided = [r for r in decisive if not r["tie"]]
    agree = [
        r
        for r in decided
        if r["oracle"]["correct"][r["chosen"]] and not r["oracle"]["correct"][r["rejected"]]
    ]
    out: dict[str, Any] = {
        "judged": len(rows), "ties": len(ties),
        "ties_order": sum(r["reason"] == "order_disagree" for r in ties),
        "ties_margin": sum(r["reason"] == "below_threshold" for r in ties),
        "oracle_decisive": len(decisive), "judge_decided_on_decisive": len(decided),
    }  # fmt: skip
    mixed = [
        (c["margin"], r["oracle"]["correct"][c["i"]])
        for r in decisive
        for c in r.get("comparisons", [])
        if r["oracle"]["correct"][c["i"]] != r["oracle"]["correct"][c["j"]]
    ]
    out["margin_pairs"] = len(mixed)
    if mixed:
        out["margin_agreement"] = sum(
            (m > 0 and i_right) or (m < 0 and not i_right) for m, i_right in mixed
        ) / len(mixed)
    if decided:
        out["oracle_agreement"] = len(agree) / len(decided)
    if decisive:
        out["oracle_coverage"] = len(decided) / len(decisive)
    return out


# ------------------------------------------------------------------------------------ 4. pairs
def pair_stage(
    reference: FrozenPolicy | None, strategy: Any, cfg: ISRTConfig, records: list[PoolRecord],
    directory: Path, t: int,
) -> dict:  # fmt: skip
    """Stage 4: a LLaVA-Hound pair per decided judgement. ``reference`` (the start model) rescores
    the pair when ``reference_model: start``; else the sampling pass's log-probs of π_t are used."""
    store = StageStore(directory, "pairs", strategy.rank)
    if store.is_done():
        return store.stats()
    samples = StageStore(directory, "samples").read()
    judged = StageStore(directory, "judgements").read()
    by_id = {r.id: r for r in records}
    decided = [r.id for r in records if r.id in judged and not judged[r.id]["tie"]]

    def work(rid: str | None) -> dict | None:
        key = rid if rid is not None else (decided[0] if decided else None)
        if key is None:
            return None
        sample, verdict, rec = samples[key], judged[key], by_id[key]
        c, r = sample["samples"][verdict["chosen"]], sample["samples"][verdict["rejected"]]
        ref = [c["logp"], r["logp"]]
        frames = sample["frames"]
        if reference is not None:
            clip = reference.clips(rec.video, key)
            group = group_from_ids(key, sample["prompt_ids"], [c["ids"], r["ids"]], None, clip)
            ref = [float(v) for v in reference.score([group])[0][0]]
            frames = frames_digest(clip)
        if rid is None:
            return None
        return {
            "id": key, "video": rec.video_key, "prompt": rec.question, "chosen": c["text"],
            "rejected": r["text"], "iteration": t, "judge_margin": verdict["margin"],
            "context": verdict.get("context"), "lengths": [len(c["ids"]), len(r["ids"])],
            "ref_logps": ref, "reference": cfg.reference_model, "prompt_ids": sample["prompt_ids"],
            "chosen_ids": c["ids"], "rejected_ids": r["ids"], "frames": frames,
        }  # fmt: skip

    _run(strategy, store, decided, work)
    rows = list(store.read().values()) if strategy.is_main else []
    store.finish(
        strategy, {"pairs": len(rows), "chosen_shorter": sum(p["lengths"][0] < p["lengths"][1] for p in rows)}
    )
    return store.stats()
