"""Reward model = LMM + a scalar head on the last token; factually augmented reward prompts.

LLaVA-RLHF (https://arxiv.org/abs/2309.14525) reads the reward from the hidden state of the last
token of ``[conversation | response | reward prompt]``, where the reward prompt asks the model to
judge its last response and, for *factual augmentation*, lists the image's ground-truth captions
(one per line, shuffled per example) and, for multiple-choice / yes-no data, the true option.
Templates live in ``configs/prompts/`` with ``{captions}`` and ``{answer}`` placeholders filled from
the record's ``captions`` and ``answer`` (or ``gt_answer``) fields.

Pairs are scored in the shared-prefix layout of :mod:`mmalign.preference.batch`: the prompt
(and its image) once, each response followed by the reward prompt as its own segment.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmalign.data.templates import Message
from mmalign.models.checkpoint import load_model
from mmalign.models.heads import ScalarHead, ScalarModel
from mmalign.models.lmm import LMM
from mmalign.preference.formats import PreferencePair

HEAD_FILE = "reward_head.safetensors"


class RewardModel(ScalarModel):
    """``r(x, y)``: the LMM's last hidden state at the end of each sequence → a scalar head.

    A :class:`~mmalign.models.heads.ScalarModel` reading the last position; ``forward(batch)``
    gives ``(num_pairs, num_responses)`` float32 rewards.

    Args:
        lmm: the (SFT) model.
        head: the scalar head (default: zero-initialised weight and bias, so r = 0 at the start);
            an ``nn.Linear(D, 1)`` is converted (its weights copied).
    """

    def __init__(self, lmm: LMM, head: ScalarHead | nn.Linear | None = None) -> None:
        if isinstance(head, nn.Linear):
            head = ScalarHead.from_state_dict(head.state_dict())
        super().__init__(lmm, head, read="last")


def save_head(head: nn.Module | dict[str, torch.Tensor], directory: str | Path) -> Path:
    """Write the head next to an mmalign checkpoint (``reward_head.safetensors``)."""
    state = head.state_dict() if isinstance(head, nn.Module) else head
    path = Path(directory) / HEAD_FILE
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path))
    return path


def load_reward_model(directory: str | Path, dtype: torch.dtype | None = None) -> tuple[RewardModel, Any]:
    """An mmalign checkpoint with ``reward_head.safetensors`` → (RewardModel, tokenizer)."""
    lmm, tokenizer = load_model(directory, dtype)
    path = Path(directory) / HEAD_FILE
    if not path.exists():
        raise FileNotFoundError(f"{directory} has no {HEAD_FILE}: not a reward model")
    head = ScalarHead.from_state_dict(load_file(str(path)))
    return RewardModel(lmm, head.to(dtype or head.weight.dtype)).eval(), tokenizer


def fill_reward_prompt(
    template: str,
    record_id: str,
    captions: list[str] | None,
    answer: str | None,
    rng: random.Random,
) -> str:
    """Fill a reward prompt template's ``{captions}`` and ``{answer}`` placeholders.

    The one place the reward prompt is built, so that reward-model training
    (:func:`reward_suffix`) and PPO (:func:`mmalign.rl.rewards.reward_prompt`) score the same
    text. Captions are shuffled with ``rng`` and listed one per line, as LLaVA-RLHF shuffles them
    per example (``RLHF/models/ppo_trainer.py``, ``rollout``: ``random.shuffle(caption_list)``).
    Departure: their prompt prefixes each caption with ``"  - "`` inside a fixed sentence
    (``FACTUAL_PROMPT`` of ``RLHF/data_utils/constants.py``); here the template decides the wording.
    Fields the template does not name are ignored.

    Args:
        template: a ``str.format`` template (``configs/prompts/fact_rlhf_reward*.txt``).
        record_id: the record's id, for error messages.
        captions: the ground-truth captions (needed when the template has ``{captions}``).
        answer: the true answer (needed when the template has ``{answer}``).
        rng: the shuffle's random source (the caller seeds it per example / per rollout).

    Returns:
        The filled prompt text.

    Raises:
        ValueError: the template needs captions or an answer that the record lacks (names the id).
    """
    fields: dict[str, str] = {}
    if "{captions}" in template:
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
            raise ValueError(
                f"record {record_id}: the reward prompt needs a non-empty 'captions' list of strings"
            )
        shuffled = list(captions)
        rng.shuffle(shuffled)
        fields["captions"] = "\n".join(shuffled)
    if "{answer}" in template:
        if not isinstance(answer, str) or not answer:
            raise ValueError(
                f"record {record_id}: the reward prompt needs an 'answer' (or 'gt_answer') string"
            )
        fields["answer"] = answer
    return template.format(**fields)


def reward_suffix(template: str, pair: PreferencePair, seed: int = 0) -> list[Message]:
    """The reward prompt as a user turn, ``{captions}`` / ``{answer}`` filled from the record.

    Captions are shuffled per example (seeded by ``seed`` and the pair id), one per line; see
    :func:`fill_reward_prompt`.

    Raises:
        ValueError: the template needs captions or an answer that the record lacks (names the id).
    """
    content = fill_reward_prompt(
        template,
        pair.id,
        pair.meta.get("captions"),
        pair.meta.get("answer", pair.meta.get("gt_answer")),
        random.Random(f"{seed}:{pair.id}"),
    )
    return [{"role": "user", "content": content}]
