"""i-SRT's judges: which of two sampled answers is better, asked in both orders.

* :class:`SelfJudge` — π_t itself sees the video, the question, the context c_t and both answers
  (:func:`mmalign.isrt.prompts.judge_text`) and its preference is read from the answer-letter
  log-probs: the continuations ``A`` and ``B`` (as the template renders an assistant answer, end
  of turn included) are scored in one shared-prefix forward per order. For samples (i, j):
  ``pref_1 = log p(A) − log p(B)`` with i as A, ``pref_2 = log p(B) − log p(A)`` with i as B;
  ``margin = (pref_1 + pref_2) / 2`` (> 0: i is chosen). The orders disagreeing in sign, or
  ``|margin| < tie_threshold``, is a tie (dropped, counted by reason).
* :class:`LLMJudge` — an OpenAI-compatible endpoint (:class:`mmalign.llm.client.ChatClient`) that
  reads c_t as text instead of the video and replies with a letter in each order; margin ±1 when
  both orders agree, else a tie.
* :class:`OracleJudge` — the exact ShapeWorld judge (:func:`mmalign.shapeworld.judges.qa_correct`):
  a right answer over a wrong one (margin 1); both right or both wrong is a tie.

With K > 2 samples every pair (i < j) is judged and the decided pair of largest |margin| is kept.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, Protocol

from mmalign.isrt.config import ISRTConfig
from mmalign.isrt.policy import FrozenPolicy
from mmalign.isrt.prompts import PoolRecord, judge_text, user_turn
from mmalign.preference.batch import encode_group
from mmalign.shapeworld.judges import qa_correct

LETTERS = ("A", "B")


class Judge(Protocol):
    def judge(
        self, rec: PoolRecord, answers: list[str], context: str | None, real: bool = True
    ) -> dict[str, Any]:
        """A verdict: ``chosen``/``rejected`` sample indices (None on a tie), ``margin``, ``tie``,
        ``reason`` (``order_disagree`` | ``below_threshold`` | ``oracle_equal`` | None),
        ``comparisons`` (per pair: i, j, pref per order, margin) and ``judge``.

        ``real`` False marks a filler call (ZeRO-3 lockstep): it must run the same forwards."""
        ...


def decide(comparisons: list[dict[str, Any]], threshold: float, judge: str) -> dict[str, Any]:
    """The verdict from per-pair comparisons ``{i, j, prefs: [pref_1, pref_2], margin}``.

    A pair is decided when both orders prefer the same sample and ``|margin| ≥ threshold``; the
    decided pair of largest |margin| wins. With none decided the verdict is a tie whose reason is
    ``order_disagree`` if any pair's orders disagreed, else ``below_threshold``.
    """
    decided, reason = [], "below_threshold"
    for c in comparisons:
        p1, p2 = c["prefs"]
        if (p1 > 0) != (p2 > 0) or p1 == 0 or p2 == 0:
            c["tie"], reason = "order_disagree", "order_disagree"
        elif abs(c["margin"]) < threshold:
            c["tie"] = "below_threshold"
        else:
            c["tie"] = None
            decided.append(c)
    base = {"comparisons": comparisons, "judge": judge}
    if not decided:
        return {**base, "chosen": None, "rejected": None, "margin": 0.0, "tie": True, "reason": reason}
    best = max(decided, key=lambda c: abs(c["margin"]))
    i, j = (best["i"], best["j"]) if best["margin"] > 0 else (best["j"], best["i"])
    return {**base, "chosen": i, "rejected": j, "margin": abs(best["margin"]), "tie": False, "reason": None}


class SelfJudge:
    """π_t as its own judge (module docstring)."""

    def __init__(self, policy: FrozenPolicy, cfg: ISRTConfig) -> None:
        self.policy, self.cfg = policy, cfg

    def order_groups(self, rec: PoolRecord, a: str, b: str, context: str | None) -> list[Any]:
        """The two letter-scoring groups of one pair: ``(a as A, b as B)`` and ``(b as A, a as B)``."""
        clip = self.policy.clips(rec.video, rec.id)
        groups = []
        for first, second in ((a, b), (b, a)):
            prompt = user_turn(judge_text(self.cfg, rec.question, first, second, context))
            g = encode_group(
                self.policy.processor, rec.id, prompt, LETTERS, videos=[rec.video], load_media=False
            )
            g.videos = clip
            groups.append(g)
        return groups

    def judge(
        self, rec: PoolRecord, answers: list[str], context: str | None, real: bool = True
    ) -> dict[str, Any]:
        comparisons = []
        for i, j in itertools.combinations(range(len(answers)), 2):
            sums, _ = self.policy.score(self.order_groups(rec, answers[i], answers[j], context))
            pref_1 = float(sums[0, 0] - sums[0, 1])  # i is A
            pref_2 = float(sums[1, 1] - sums[1, 0])  # i is B
            comparisons.append({"i": i, "j": j, "prefs": [pref_1, pref_2], "margin": (pref_1 + pref_2) / 2})
        return decide(comparisons, self.cfg.tie_threshold, "self")


def parse_letter(text: str) -> str:
    """``A`` or ``B`` from a judge's reply (the first standalone letter).

    Raises:
        ValueError: neither letter stands alone in the reply.
    """
    m = re.search(r"\b([AB])\b", text.strip())
    if m is None:
        raise ValueError("no standalone A or B in the reply")
    return m.group(1)


JUDGE_SYSTEM = (
    "You compare two answers to a question about a video. You cannot see the video; when a "
    "description of it is given, trust the description."
)


class LLMJudge:
    """An OpenAI-compatible endpoint as the judge, given the context as text (module docstring)."""

    def __init__(self, client: Any, cfg: ISRTConfig) -> None:
        self.client, self.cfg = client, cfg

    def judge(
        self, rec: PoolRecord, answers: list[str], context: str | None, real: bool = True
    ) -> dict[str, Any]:
        comparisons = []
        for i, j in itertools.combinations(range(len(answers)), 2):
            prefs = []
            for first, second, sign in ((answers[i], answers[j], 1.0), (answers[j], answers[i], -1.0)):
                text = judge_text(self.cfg, rec.question, first, second, context)
                msgs = [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": text}]
                letter = self.client.chat(msgs, validate=parse_letter) if real else "A"
                prefs.append(sign * (1.0 if letter == "A" else -1.0))
            comparisons.append({"i": i, "j": j, "prefs": prefs, "margin": sum(prefs) / 2})
        return decide(comparisons, self.cfg.tie_threshold, f"llm:{self.client.config.model}")


def oracle_view(rec: PoolRecord, answers: list[str]) -> dict[str, Any] | None:
    """Exact correctness of each answer and the first right one when the truth decides (some
    right, some wrong); None without a ShapeWorld truth."""
    if rec.truth is None:
        return None
    correct = [bool(qa_correct(rec.truth, a)) for a in answers]
    decisive = any(correct) and not all(correct)
    return {"correct": correct, "preferred": correct.index(True) if decisive else None}


class OracleJudge:
    """The exact ShapeWorld judge (module docstring)."""

    def __init__(self, cfg: ISRTConfig) -> None:
        self.cfg = cfg

    def judge(
        self, rec: PoolRecord, answers: list[str], context: str | None, real: bool = True
    ) -> dict[str, Any]:
        view = oracle_view(rec, answers)
        if view is None:
            raise ValueError(f"record {rec.id}: the oracle judge needs a ShapeWorld truth item")
        c = view["correct"]
        comparisons = [
            {"i": i, "j": j, "prefs": [float(c[i]) - c[j]] * 2, "margin": float(c[i]) - c[j]}
            for i, j in itertools.combinations(range(len(answers)), 2)
        ]
        verdict = decide(comparisons, min(self.cfg.tie_threshold, 1.0), "oracle")
        if verdict["tie"]:
            verdict["reason"] = "oracle_equal"
        return verdict


def make_judge(cfg: ISRTConfig, policy: FrozenPolicy | None) -> Judge:
    """The configured judge (``llm`` reads the endpoint from the config or the environment)."""
    if cfg.judge == "self":
        assert policy is not None
        return SelfJudge(policy, cfg)
    if cfg.judge == "oracle":
        return OracleJudge(cfg)
    from mmalign.llm.client import ChatClient, LLMConfig

    return LLMJudge(ChatClient(LLMConfig.from_env(cfg.judge_base_url, cfg.judge_model, max_tokens=8)), cfg)
