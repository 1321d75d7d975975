"""Reward shaping for PPO as LLaVA-RLHF does it: RM score, correctness, length and no-EOS terms.

LLaVA-RLHF (Sun et al., 2023, https://arxiv.org/abs/2309.14525; code
https://github.com/llava-rlhf/LLaVA-RLHF, ``RLHF/models/ppo_trainer.py``) adds to the reward
model's score, per response, before the per-token KL penalty:

* ``post_reward``: ``penalty_reward_value`` (−8 in ``RLHF/scripts/*/train_rl_model.sh``, with
  ``--relative_stop_token_penalty True``) when the response holds no EOS token;
* ``_shape_reward``: ``length_bonus_score`` (−10) × ``len / response_len`` (896) × the record's
  ``length_bonus``, where ``len`` counts the response's non-pad tokens after truncation, and
  ``correct_bonus_score`` (2.0) × the correctness bonus of ``rollout`` (:func:`correctness`);
* ``_estimate_advantage``: with ``--whiten_rewards False`` the shaped rewards are ×10.

Here each term is its own tensor (:func:`shape_rewards`) so a trainer can log them apart, and
``total = reward_scale · (rm + correctness + length + no_eos)``, clipped if asked. Differences a
trainer must carry: their ×10 multiplies the per-token KL penalty too (it scales the whole shaped
reward), so scale the KL term by ``reward_scale`` to reproduce them; their ``reward_bias``
(default 0, unused in the scripts) is not offered; reward whitening and the KL are the trainer's.

The reward prompt is built by :func:`mmalign.preference.reward_model.fill_reward_prompt`, the
same function reward-model training uses, so PPO scores the text the RM was trained on.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mmalign.data.templates import Message
from mmalign.eval.answers import PARSERS
from mmalign.preference.reward_model import fill_reward_prompt
from mmalign.rl.prompts import RLPrompt

McRule = Literal["llava_rlhf", "letter"]
YesNoRule = Literal["llava_rlhf", "reference", "reference-exact", "strict"]


def reward_prompt(template: str, prompt: RLPrompt, rng: random.Random) -> list[Message]:
    """The reward prompt as a user turn, ``{captions}`` / ``{answer}`` filled from the prompt.

    Captions are shuffled with ``rng`` on every call: LLaVA-RLHF reshuffles them on every rollout
    (``random.shuffle`` in ``rollout``); a trainer passes
    ``random.Random(f"{seed}:{rollout_index}:{prompt.id}")`` to do so reproducibly.

    Raises:
        ValueError: the template needs captions or an answer the prompt lacks (names the id).
    """
    content = fill_reward_prompt(template, prompt.id, prompt.captions, prompt.answer, rng)
    return [{"role": "user", "content": content}]


def _finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"ShapingConfig.{name} must be a finite number, got {value!r}")


@dataclass
class ShapingConfig:
    """The terms added to the reward-model score (module docstring); defaults switch them off.

    Attributes:
        correctness_coef: weight of :func:`correctness` (LLaVA-RLHF ``--correct_bonus_score 2.0``).
        mc_bonus: bonus for stating the true option letter (their code: 1.0).
        yes_no_bonus: ± bonus for "no" / "yes" when the truth is "no" (their code: 0.5).
        length_coef: the length term is ``−length_coef · len / length_max · length_bonus``
            (their ``--length_bonus_score −10``, i.e. length_coef 10; a penalty on length).
        length_max: the response budget that normalises the length (their ``--response_len 896``).
        no_eos_penalty: subtracted when no EOS was produced (their ``--penalty_reward_value −8``
            with ``--relative_stop_token_penalty True``, i.e. 8).
        reward_scale: multiplies the total (their ×10 when ``--whiten_rewards False``).
        reward_clip: clip the total to ``±reward_clip`` (None: no clip; their code has none).
        mc_rule: ``llava_rlhf`` (their rule, :func:`stated_letter`) or ``letter``, which also
            accepts a response that is only the letter (``B``, ``(B)``, ``B)``).
        yes_no_rule: ``llava_rlhf`` (their rule: the response starts with ``No`` / ``Yes``) or a
            parser of :mod:`mmalign.eval.answers` (``reference``, ``reference-exact``, ``strict``;
            an answer fitting neither pattern earns 0).

    Raises:
        ValueError: a non-finite number, negative bonus or penalty, ``length_max`` < 1,
            ``reward_scale`` <= 0, ``reward_clip`` <= 0, or an unknown rule.
    """

    correctness_coef: float = 0.0
    mc_bonus: float = 1.0
    yes_no_bonus: float = 0.5
    length_coef: float = 0.0
    length_max: int = 896
    no_eos_penalty: float = 0.0
    reward_scale: float = 1.0
    reward_clip: float | None = None
    mc_rule: McRule = "llava_rlhf"
    yes_no_rule: YesNoRule = "llava_rlhf"

    def __post_init__(self) -> None:
        for name in (
            "correctness_coef",
            "mc_bonus",
            "yes_no_bonus",
            "length_coef",
            "no_eos_penalty",
            "reward_scale",
        ):
            _finite(name, getattr(self, name))
        for name in ("mc_bonus", "yes_no_bonus", "no_eos_penalty"):
            if getattr(self, name) < 0:
                raise ValueError(f"ShapingConfig.{name} must be >= 0, got {getattr(self, name)}")
        if isinstance(self.length_max, bool) or not isinstance(self.length_max, int) or self.length_max < 1:
            raise ValueError(f"ShapingConfig.length_max must be an integer >= 1, got {self.length_max!r}")
        if self.reward_scale <= 0:
            raise ValueError(f"ShapingConfig.reward_scale must be > 0, got {self.reward_scale}")
        if self.reward_clip is not None:
            _finite("reward_clip", self.reward_clip)
            if self.reward_clip <= 0:
                raise ValueError(f"ShapingConfig.reward_clip must be > 0 or None, got {self.reward_clip}")
        if self.mc_rule not in ("llava_rlhf", "letter"):
            raise ValueError(f"ShapingConfig.mc_rule must be 'llava_rlhf' or 'letter', got {self.mc_rule!r}")
        if self.yes_no_rule != "llava_rlhf" and self.yes_no_rule not in PARSERS:
            raise ValueError(
                f"ShapingConfig.yes_no_rule must be 'llava_rlhf' or one of {sorted(PARSERS)}, got {self.yes_no_rule!r}"
            )

    @classmethod
    def llava_rlhf(cls) -> ShapingConfig:
        """The settings of LLaVA-RLHF's ``RLHF/scripts/*/train_rl_model.sh``."""
        return cls(
            correctness_coef=2.0, length_coef=10.0, length_max=896, no_eos_penalty=8.0, reward_scale=10.0
        )


def stated_letter(text: str, letter: str, rule: McRule = "llava_rlhf") -> bool:
    """Whether the response states option ``letter``.

    ``llava_rlhf`` (``rollout`` in ``RLHF/models/ppo_trainer.py``): the stripped response starts
    with ``"B."`` or contains ``"correct option is B."`` — case-sensitive, so a bare ``B`` or
    ``(B)`` does not count. ``letter`` also accepts a response that is only the letter.
    """
    if text.strip().startswith(f"{letter}.") or f"correct option is {letter}." in text:
        return True
    return rule == "letter" and text.strip().rstrip(".") in (letter, f"({letter})", f"{letter})")


def said_yes_no(text: str, rule: YesNoRule = "llava_rlhf") -> str | None:
    """``"yes"`` / ``"no"`` / None (neither) under ``rule``.

    ``llava_rlhf``: the stripped response starts with ``No`` (→ no) or ``Yes`` (→ yes),
    case-sensitive and checked as a prefix, exactly as their code does (so ``Nothing ...`` and
    ``Now ...`` read as no, ``yes`` in lower case as neither). Other names use the parsers of
    :mod:`mmalign.eval.answers`.
    """
    if rule == "llava_rlhf":
        stripped = text.strip()
        return "no" if stripped.startswith("No") else "yes" if stripped.startswith("Yes") else None
    parsed = PARSERS[rule](text)
    return None if parsed is None else ("yes" if parsed else "no")


def correctness(text: str, prompt: RLPrompt, cfg: ShapingConfig) -> float:
    """LLaVA-RLHF's correctness bonus for one response (before ``correctness_coef``).

    * multiple choice: ``mc_bonus`` when the response states the true letter
      (:func:`stated_letter`), else 0;
    * yes/no with truth "no": ``+yes_no_bonus`` for a "no", ``−yes_no_bonus`` for a "yes", 0 for
      neither (:func:`said_yes_no`);
    * yes/no with truth "yes": 0 whatever the response — their code gives no symbolic reward
      there (``# TODO(zhiqings): for now, we do not give symbolic award for "Yes"``);
    * open: 0.
    """
    if prompt.kind == "multiple_choice":
        return cfg.mc_bonus if stated_letter(text, str(prompt.answer), cfg.mc_rule) else 0.0
    if prompt.kind == "yes_no" and prompt.answer == "no":
        said = said_yes_no(text, cfg.yes_no_rule)
        return cfg.yes_no_bonus if said == "no" else -cfg.yes_no_bonus if said == "yes" else 0.0
    return 0.0


def shape_rewards(
    rm_scores: Tensor,
    texts: list[str],
    lengths: Tensor,
    finished: Tensor,
    prompts: list[RLPrompt],
    cfg: ShapingConfig,
) -> dict[str, Tensor]:
    """The per-sequence reward and each of its terms.

    Args:
        rm_scores: ``(S,)`` reward-model scores.
        texts: ``S`` decoded responses (special tokens skipped), for the correctness bonus.
        lengths: ``(S,)`` response lengths in tokens after truncation (LLaVA-RLHF counts the
            non-pad tokens, the EOS included).
        finished: ``(S,)`` bool, the response produced an EOS.
        prompts: ``S`` prompts, one per sequence.
        cfg: the shaping settings.

    Returns:
        float32 ``(S,)`` tensors on ``rm_scores``' device: ``rm``, ``correctness`` (already
        × ``correctness_coef``), ``length``, ``no_eos`` and ``total`` =
        ``reward_scale · (rm + correctness + length + no_eos)``, clipped to ``±reward_clip``.

    Raises:
        ValueError: shapes or counts disagree, or ``finished`` is not bool.
    """
    if rm_scores.dim() != 1:
        raise ValueError(f"rm_scores must be (S,), got shape {tuple(rm_scores.shape)}")
    n = rm_scores.shape[0]
    if len(texts) != n or len(prompts) != n:
        raise ValueError(f"{n} scores for {len(texts)} texts and {len(prompts)} prompts")
    if lengths.shape != (n,) or finished.shape != (n,):
        raise ValueError(
            f"lengths {tuple(lengths.shape)} and finished {tuple(finished.shape)} must be ({n},)"
        )
    if finished.dtype != torch.bool:
        raise ValueError(f"finished must be a bool tensor, got {finished.dtype}")
    device = rm_scores.device
    rm = rm_scores.detach().float()
    bonus = torch.tensor([correctness(t, p, cfg) for t, p in zip(texts, prompts, strict=True)], device=device)
    multiplier = torch.tensor([p.length_bonus for p in prompts], dtype=torch.float32, device=device)
    terms = {
        "rm": rm,
        "correctness": cfg.correctness_coef * bonus.float(),
        "length": -cfg.length_coef * lengths.to(device).float() / cfg.length_max * multiplier,
        "no_eos": -cfg.no_eos_penalty * (~finished.to(device)).float(),
    }
    total = cfg.reward_scale * (terms["rm"] + terms["correctness"] + terms["length"] + terms["no_eos"])
    if cfg.reward_clip is not None:
        total = total.clamp(-cfg.reward_clip, cfg.reward_clip)
    return {**terms, "total": total}
