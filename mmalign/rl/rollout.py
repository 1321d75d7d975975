"""PPO rollouts: sample responses, score them with policy, reference, value and reward model, and
turn the scores into per-token rewards, advantages and returns.

One rollout (:func:`collect_rollout`), for this rank's prompts:

1. **Sample** ``num_samples`` responses per prompt with the policy (:func:`mmalign.training.
   generation.generate`: KV-cached, media encoded once per prompt, placeholders never sampled).
   Under ZeRO-3 the policy's weights are gathered once (:meth:`Strategy.generation_weights`) so
   ranks may stop at different lengths; when they do not fit, ``synced_gpus`` keeps ranks stepping.
2. **Score** the sampled token ids as they were sampled (:func:`~mmalign.preference.batch.
   group_from_ids`, never re-tokenised) in the training layout — one shared-prefix row per prompt
   with its K responses, so the media are encoded once per prompt for policy, reference and value:
   old log-probs (policy), reference log-probs (adapter disabled or frozen copy, same call), values.
   These come from the same forward the update runs, so the PPO ratio starts at 1.
3. **Reward**: the reward model reads ``[conversation | response text | reward prompt]`` with its
   own tokenizer, template and image size; the reward prompt's captions are shuffled anew on every
   rollout; shaping terms (:func:`mmalign.rl.rewards.shape_rewards`) are added; the sequence reward
   goes at the EOS token (or the buffer's last column) and a per-token KL penalty ``−β·KL`` on every
   token (:func:`mmalign.rl.advantages.token_rewards`).
4. **Advantages**: GAE, whitened over all ranks' tokens.

Every rank must hold the same number of prompts (the trainer's data order guarantees it), so the
ranks run the same number of forwards of every engine (ZeRO-3 gathers collectively).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mmalign.data.processor import MultimodalProcessor
from mmalign.losses.ppo import kl_penalty, masked_mean
from mmalign.models.decoding import GenerationConfig
from mmalign.preference.batch import (
    EncodedGroup,
    PreferenceBatch,
    collate_groups,
    encode_group,
    group_from_ids,
)
from mmalign.rl.actor_critic import PPOEngines
from mmalign.rl.advantages import gae, token_rewards, whiten
from mmalign.rl.config import PPOConfig
from mmalign.rl.prompts import RLPrompt
from mmalign.rl.rewards import reward_prompt, shape_rewards
from mmalign.training.generation import generate
from mmalign.utils import stable_seed


@dataclass
class Rollout:
    """One rank's rollout: G prompts × K responses = S sequences (prompt-major, ``s = g·K + k``).

    Per-token tensors are ``(S, T)`` float32, right-padded, with ``mask`` 1 on scored tokens.

    Attributes:
        prompts: the G prompts.
        groups: the policy's token groups (prompt ids, the K sampled responses, media), for the update.
        texts / finished / lengths: each response's text, whether it ended with a stop token, and
            its length in tokens (stop token included).
        mask / old_logprobs / ref_logprobs / values / rewards / advantages / returns: ``(S, T)``.
        scores: ``(S,)`` the shaped sequence reward (before the KL penalty).
        terms: ``{name: (S,)}`` each reward term (``rm``, ``correctness``, ``length``, ``no_eos``,
            ``total``).
        stats: rollout metrics of this rank (averaged over ranks by the trainer).
    """

    prompts: list[RLPrompt]
    groups: list[EncodedGroup]
    texts: list[str]
    finished: torch.Tensor
    lengths: torch.Tensor
    mask: torch.Tensor
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    terms: dict[str, torch.Tensor]
    rewards: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    advantages: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    returns: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return len(self.texts) // max(len(self.prompts), 1)

    def samples(self, limit: int) -> list[dict[str, Any]]:
        """The first ``limit`` responses as plain records: prompt id, response text, whether it
        ended with a stop token, its length in tokens and every reward term (``reward/<term>``,
        for ``samples.jsonl``)."""
        k = self.num_samples
        return [
            {
                "id": self.prompts[s // k].id,
                "response": self.texts[s],
                "finished": bool(self.finished[s]),
                "tokens": int(self.lengths[s]),
                **{f"reward/{name}": round(float(v[s]), 6) + 0.0 for name, v in self.terms.items()},
            }
            for s in range(min(limit, len(self.texts)))
        ]


def pad_by_sequence(values: torch.Tensor, batch: PreferenceBatch, width: int | None = None) -> torch.Tensor:
    """Per-scored-token values ``(N,)`` of a group batch → ``(S, T)`` right-padded with 0.

    Args:
        width: T (default: the longest sequence).
    """
    pieces = [p for group in batch.split_by_sequence(values) for p in group]
    width = width or max((len(p) for p in pieces), default=0)
    out = values.new_zeros((len(pieces), width))
    for s, p in enumerate(pieces):
        out[s, : len(p)] = p
    return out


def sequence_mask(lengths: Sequence[int], width: int, device: torch.device | None = None) -> torch.Tensor:
    """``(S, T)`` float mask with ``lengths[s]`` leading ones."""
    lengths_t = torch.as_tensor(list(lengths), device=device)
    return (torch.arange(width, device=device).unsqueeze(0) < lengths_t.unsqueeze(1)).float()


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def encode_prompts(processor: MultimodalProcessor, prompts: Sequence[RLPrompt]) -> list[dict[str, Any]]:
    """Generation features (token ids with placeholders expanded, pixels) of each prompt."""
    return [processor.encode_prompt(p.to_example()) for p in prompts]


@torch.no_grad()
def score_groups(
    engines: PPOEngines,
    groups: list[EncodedGroup],
    micro_batch: int,
    pad_id: int,
    with_reference: bool,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Per-sequence old log-probs, reference log-probs and values (each ``(len_s,)`` float32, CPU).

    Runs ``ceil(G / micro_batch)`` forwards of each engine (equal on every rank).
    """
    old, ref, val = [], [], []
    device, dtype = engines.strategy.device, engines.strategy.dtype
    for chunk in _chunks(len(groups), micro_batch):
        batch = collate_groups([groups[i] for i in chunk], pad_id).to(device, dtype)
        out = engines.policy_scores(batch, with_reference=with_reference)
        values = engines.values(batch)
        for name, store in (("token_logps", old), ("reference_token_logps", ref)):
            if name in out:
                store += [p.float().cpu() for g in batch.split_by_sequence(out[name]) for p in g]
        val += [p.float().cpu() for g in batch.split_by_sequence(values) for p in g]
    return old, ref, val


@torch.no_grad()
def reward_scores(
    reward_model: Any,
    rm_processor: MultimodalProcessor,
    prompts: Sequence[RLPrompt],
    texts: Sequence[str],
    num_samples: int,
    template: str | None,
    rollout_key: str,
    micro_batch: int,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``(S,)`` reward-model scores of the responses' text after each prompt, the reward prompt
    (captions shuffled with ``random.Random(f"{rollout_key}:{prompt.id}")``) appended."""
    groups = []
    for g, prompt in enumerate(prompts):
        suffix = (
            reward_prompt(template, prompt, random.Random(f"{rollout_key}:{prompt.id}")) if template else None
        )
        answers = list(texts[g * num_samples : (g + 1) * num_samples])
        groups.append(
            encode_group(
                rm_processor, prompt.id, prompt.prompt, answers, prompt.images, prompt.videos,
                suffix=suffix, where=prompt.where,
            )
        )  # fmt: skip
    scores = []
    for chunk in _chunks(len(groups), micro_batch):
        batch = collate_groups([groups[i] for i in chunk], rm_processor.pad_token_id).to(device, dtype)
        scores.append(reward_model(batch).float().reshape(-1).cpu())
    return torch.cat(scores) if scores else torch.zeros(0)


def _stack(pieces: list[torch.Tensor], width: int) -> torch.Tensor:
    out = torch.zeros((len(pieces), width))
    for s, p in enumerate(pieces):
        out[s, : len(p)] = p
    return out


def collect_rollout(
    engines: PPOEngines,
    reward_model: Any,
    processor: MultimodalProcessor,
    rm_processor: MultimodalProcessor,
    prompts: list[RLPrompt],
    cfg: PPOConfig,
    iteration: int,
    kl_coef: float,
    reward_template: str | None,
) -> Rollout:
    """Sample, score and reward this rank's prompts (module docstring); see :class:`Rollout`.

    Args:
        engines: the policy (its online reference scores the samples) and value engines
            (:class:`~mmalign.rl.actor_critic.PPOEngines`; the value model shares the policy's
            tokenizer).
        reward_model: a frozen :class:`~mmalign.preference.reward_model.RewardModel` (or its engine).
        rm_processor: the reward model's processor (its tokenizer, template, image size).
        iteration: seeds the sampling (with ``cfg.seed`` and the rank) and the caption shuffles.
        kl_coef: β of the per-token KL penalty (the controller's current value).
        reward_template: the reward prompt's text (``None``: no reward prompt).

    Raises:
        ValueError: propagated from the reward prompt when a prompt lacks a needed fact.
    """
    strategy = engines.strategy
    k, rank = cfg.num_samples, strategy.rank
    device, dtype = strategy.device, strategy.dtype
    policy = engines.policy_lmm
    feats = encode_prompts(processor, prompts)

    # 1. Sample (the policy's weights gathered once under ZeRO-3 when they fit).
    generator = torch.Generator(device=device).manual_seed(stable_seed(cfg.seed, "rollout", iteration, rank))
    t0 = time.time()
    with strategy.generation_weights(engines.policy, gather=cfg.gather_for_generation) as synced:
        gen_cfg = GenerationConfig(
            max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature,
            top_p=cfg.top_p, top_k=cfg.top_k, synced_gpus=synced,
        )  # fmt: skip
        generation = generate(
            policy, processor, feats, gen_cfg, num_samples=k, return_logprobs=True,
            batch_size=cfg.generation_batch_size, generator=generator,
        )  # fmt: skip
    t_sample = time.time() - t0
    lengths = torch.tensor([len(r) for r in generation.ids], dtype=torch.long)
    finished = torch.tensor(generation.finished, dtype=torch.bool)

    # 2. Score in the training layout: old log-probs, reference log-probs, values.
    responses = [list(r) for r in generation.ids]
    if not cfg.mask_padding:  # the authors' fixed buffer: padding after EOS is scored too
        responses = [r + [processor.pad_token_id] * (cfg.max_new_tokens - len(r)) for r in responses]
    groups = [
        group_from_ids(p.id, f["input_ids"], responses[g * k : (g + 1) * k], f["images"], f["videos"])
        for g, (p, f) in enumerate(zip(prompts, feats, strict=True))
    ]
    width = cfg.max_new_tokens if not cfg.mask_padding else max((len(r) for r in responses), default=1)
    width = max(width, 1)
    engines.train(False)
    t0 = time.time()
    old, ref, val = score_groups(
        engines, groups, cfg.strategy.micro_batch_size, processor.pad_token_id, with_reference=True
    )
    seq_lengths = [len(r) for r in responses]
    mask = sequence_mask(seq_lengths, width)
    old_lp, ref_lp, values = _stack(old, width), _stack(ref, width), _stack(val, width)
    gap = 0.0  # the sampler's log-probs against the training-layout forward's
    for sampled, scored in zip(generation.logprobs or [], old, strict=False):
        if len(sampled):
            gap = max(gap, float((sampled - scored[: len(sampled)]).abs().max()))

    # 3. Rewards: reward model on the text + shaping terms; per-token KL penalty.
    scores = reward_scores(
        reward_model, rm_processor, prompts, generation.texts, k, reward_template,
        f"{cfg.seed}:{iteration}", cfg.strategy.micro_batch_size, device, dtype,
    )  # fmt: skip
    per_seq = [p for p in prompts for _ in range(k)]
    terms = shape_rewards(scores, generation.texts, lengths, finished, per_seq, cfg.shaping)
    total = terms["total"].float()
    if cfg.whiten_rewards:
        total = whiten(total.unsqueeze(1), torch.ones_like(total).unsqueeze(1)).squeeze(1)
    kl = kl_penalty(old_lp, ref_lp, cfg.kl_estimator, cfg.kl_clamp_min) * mask
    # The KL penalty takes the same reward_scale as the other terms (LLaVA-RLHF scales the whole
    # shaped per-token reward by 10 when it does not whiten).
    rewards = token_rewards(total, kl * cfg.shaping.reward_scale, mask, kl_coef, cfg.reward_position)

    # 4. Advantages (GAE), whitened over every rank's tokens.
    advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    advantages = whiten(advantages, mask)
    t_score = time.time() - t0
    engines.train()

    raw_kl = ((old_lp - ref_lp) * mask).sum(1)  # exact sequence log-ratio of the samples
    stats = {
        "rollout/tok_s": float(lengths.sum()) / max(t_sample, 1e-9),
        "rollout/sample_s": t_sample,
        "rollout/score_s": t_score,
        "rollout/logprob_gap": gap,
        "response/length": float(lengths.float().mean()),
        "response/no_eos": float((~finished).float().mean()),
        "kl/sequence": float(raw_kl.mean()),
        "kl/penalty": float((kl.sum(1)).mean()),
        "kl/coef": kl_coef,
        "reward/score": float(total.mean()),
        "values/mean": float(masked_mean(values, mask)),
        **{f"reward/{name}": float(v.float().mean()) for name, v in terms.items()},
    }
    return Rollout(
        prompts, groups, generation.texts, finished, lengths, mask, old_lp, ref_lp, values,
        total, terms, rewards, advantages, returns, stats,
    )  # fmt: skip
