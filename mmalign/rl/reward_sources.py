"""Where an RL response's reward comes from: a reward model, Python reward functions, or both.

:class:`RewardSources` scores a rollout's responses with

* the **reward model** (frozen; it may have another base, tokenizer and image size than the
  policy): it reads ``[conversation | response text | reward prompt]`` with its own processor; the
  reward prompt's captions are shuffled anew on every rollout (LLaVA-RLHF's factual augmentation);
* **reward functions** given as ``module:function`` (:mod:`mmalign.rl.reward_fns`): verifiable
  rewards (math, OCR, counting, the exact ShapeWorld judge) that receive each prompt's record —
  its facts and media paths — and the responses;

each with a weight, each reported on its own. Their weighted sum is the *score* the shaping terms
of :func:`mmalign.rl.rewards.shape_rewards` are added to.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mmalign.data.processor import MultimodalProcessor
from mmalign.preference.batch import collate_groups, encode_group
from mmalign.rl.prompts import RLPrompt
from mmalign.rl.reward_fns import RewardFn, call_reward_fn
from mmalign.rl.rewards import reward_prompt


@dataclass
class RewardFunction:
    """A Python reward function in the config.

    Attributes:
        spec: ``package.module:function`` or ``path/to/file.py:function``
            (``mmalign.rl.reward_fns:shapeworld_judge`` is the built-in exact ShapeWorld judge).
        weight: its weight in the score.
        name: its name in the metrics (``reward/fn/<name>``; default: the function's name).
    """

    spec: str
    weight: float = 1.0
    name: str | None = None

    def __post_init__(self) -> None:
        if ":" not in self.spec:
            raise ValueError(f"reward function {self.spec!r}: expected module:function or file.py:function")
        if self.name is None:
            self.name = self.spec.rsplit(":", 1)[1]


def prompt_record(prompt: RLPrompt) -> dict[str, Any]:
    """The record a reward function receives: the prompt's other fields, its id, facts and media paths."""
    return {
        **prompt.meta,
        "id": prompt.id,
        "captions": prompt.captions,
        "answer": prompt.answer,
        "kind": prompt.kind,
        "images": [str(p) for p in prompt.images],
        "videos": [str(p) for p in prompt.videos],
    }


@dataclass
class RewardSources:
    """The reward model and reward functions of a run.

    Attributes:
        reward_model: a frozen :class:`~mmalign.preference.reward_model.RewardModel` (or its
            engine), or ``None``.
        rm_processor: its processor (tokenizer, template, image size).
        template: the reward prompt's text, or ``None``.
        rm_weight: the reward model's weight.
        functions: ``(name, function, weight)`` of each reward function.
        on_error: a function that raises or returns NaN: ``error`` (names the record) or ``skip``
            (the response gets no gradient and is counted).
        micro_batch: prompts per reward-model forward.
    """

    reward_model: Any = None
    rm_processor: MultimodalProcessor | None = None
    template: str | None = None
    rm_weight: float = 1.0
    functions: list[tuple[str, RewardFn, float]] = field(default_factory=list)
    on_error: str = "error"
    micro_batch: int = 8

    @torch.no_grad()
    def model_scores(
        self,
        prompts: Sequence[RLPrompt],
        texts: Sequence[str],
        k: int,
        rollout_key: str,
        device: Any,
        dtype: Any,
    ) -> torch.Tensor:
        """``(S,)`` reward-model scores (captions shuffled with ``Random(f"{rollout_key}:{id}")``).

        Every rank must pass the same number of prompts (the frozen model gathers under ZeRO-3).
        """
        groups = []
        for g, prompt in enumerate(prompts):
            rng = random.Random(f"{rollout_key}:{prompt.id}")
            suffix = reward_prompt(self.template, prompt, rng) if self.template else None
            groups.append(
                encode_group(
                    self.rm_processor, prompt.id, prompt.prompt, list(texts[g * k : (g + 1) * k]),
                    prompt.images, prompt.videos, suffix=suffix, where=prompt.where,
                )
            )  # fmt: skip
        scores = []
        pad = self.rm_processor.pad_token_id
        for start in range(0, len(groups), self.micro_batch):
            batch = collate_groups(groups[start : start + self.micro_batch], pad).to(device, dtype)
            scores.append(self.reward_model(batch).float().reshape(-1).cpu())
        return torch.cat(scores) if scores else torch.zeros(0)

    def score(
        self,
        prompts: Sequence[RLPrompt],
        texts: Sequence[str],
        k: int,
        rollout_key: str,
        device: Any,
        dtype: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[int]]:
        """The weighted score of every response and each source's raw value.

        Args:
            prompts: G prompts; texts: their ``G · k`` responses, prompt-major.

        Returns:
            ``(score (S,), {"rm": (S,), "fn/<name>": (S,)}, skipped)`` — ``skipped``: indices of
            responses a reward function failed on (``on_error="skip"``), scored 0 by it.

        Raises:
            ValueError: a reward function failed with ``on_error="error"`` (names the record).
        """
        n = len(texts)
        score = torch.zeros(n)
        terms: dict[str, torch.Tensor] = {}
        if self.reward_model is not None:
            terms["rm"] = self.model_scores(prompts, texts, k, rollout_key, device, dtype)
            score += self.rm_weight * terms["rm"]
        records = [prompt_record(p) for p in prompts for _ in range(k)]
        skipped: set[int] = set()
        for name, fn, weight in self.functions:
            values, bad = call_reward_fn(fn, name, records, list(texts), self.on_error)
            terms[f"fn/{name}"] = values.float().cpu()
            score += weight * terms[f"fn/{name}"]
            skipped.update(bad)
        return score, terms, sorted(skipped)
