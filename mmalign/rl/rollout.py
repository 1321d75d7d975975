"""RL rollouts: sample responses, score them with policy, reference, value, reward model and reward
functions, and turn the scores into advantages (PPO's GAE, or a critic-free baseline).

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
3. **Reward** (:class:`~mmalign.rl.reward_sources.RewardSources`): the reward model reads
   ``[conversation | response text | reward prompt]`` with its own tokenizer, template and image
   size (the reward prompt's captions shuffled anew on every rollout) and/or Python reward
   functions read the record and the text; shaping terms (:func:`mmalign.rl.rewards.shape_rewards`)
   are added.
4. **Advantages**: PPO — the sequence reward at the EOS token (or the buffer's last column), a
   per-token KL penalty ``−β·KL`` on every token (:func:`mmalign.rl.advantages.token_rewards`),
   GAE, whitened over all ranks' tokens. Critic-free (:mod:`mmalign.rl.baselines`) — the sequence
   reward (minus β·ΣKL when ``kl_mode: reward``) against a baseline: the greedy response's reward
   (ReMax; the greedy response is decoded in the same rollout and scored by the same sources,
   without a KL term), the other samples' mean (RLOO), or the group's mean and std (GRPO); the
   advantage sits on every token of the response.

Every rank must hold the same number of prompts (the trainer's data order guarantees it), so the
ranks run the same number of forwards of every engine (ZeRO-3 gathers collectively).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from mmalign.data.processor import MultimodalProcessor
from mmalign.losses.ppo import kl_penalty, masked_mean
from mmalign.models.decoding import GenerationConfig
from mmalign.preference.batch import (
    EncodedGroup,
    PreferenceBatch,
    collate_groups,
    group_from_ids,
)
from mmalign.rl.actor_critic import PPOEngines
from mmalign.rl.advantages import gae, token_rewards, whiten
from mmalign.rl.baselines import (
    broadcast_to_tokens,
    equal_reward_share,
    grpo_advantages,
    remax_advantages,
    rloo_advantages,
)
from mmalign.rl.config import PPOConfig
from mmalign.rl.prompts import RLPrompt
from mmalign.rl.reward_sources import RewardSources
from mmalign.rl.rewards import shape_rewards
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
        terms: ``{name: (S,)}`` each reward term: ``score`` (the weighted sources), ``rm``,
            ``fn/<name>``, ``correctness``, ``length``, ``no_eos``, ``total``.
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


def _stack(pieces: list[torch.Tensor], width: int) -> torch.Tensor:
    out = torch.zeros((len(pieces), width))
    for s, p in enumerate(pieces):
        out[s, : len(p)] = p
    return out


def _rewarded(
    rewards: RewardSources, prompts: list[RLPrompt], texts: list[str], lengths: torch.Tensor,
    finished: torch.Tensor, k: int, key: str, cfg: PPOConfig, device: Any, dtype: Any,
) -> tuple[dict[str, torch.Tensor], list[int]]:  # fmt: skip
    """Every reward term of ``texts`` (the sources' score + shaping) and the skipped indices."""
    score, sources, skipped = rewards.score(prompts, texts, k, key, device, dtype)
    per_seq = [p for p in prompts for _ in range(k)]
    terms = shape_rewards(score, texts, lengths, finished, per_seq, cfg.shaping)
    terms["score"] = terms.pop("rm")
    return {**sources, **terms}, skipped


def collect_rollout(
    engines: PPOEngines,
    rewards: RewardSources,
    processor: MultimodalProcessor,
    prompts: list[RLPrompt],
    cfg: PPOConfig,
    iteration: int,
    kl_coef: float,
) -> Rollout:
    """Sample, score and reward this rank's prompts (module docstring); see :class:`Rollout`.

    Args:
        engines: the policy (its online reference scores the samples) and, for PPO, the value
            (:class:`~mmalign.rl.actor_critic.PPOEngines`; the value model shares the policy's
            tokenizer).
        rewards: the reward model and reward functions.
        iteration: seeds the sampling (with ``cfg.seed`` and the rank) and the caption shuffles.
        kl_coef: β of the KL penalty (the controller's current value).

    Raises:
        ValueError: a prompt lacks a fact its reward prompt needs, or a reward function failed
            (``reward_fn_errors: error``), naming the record.
    """
    strategy = engines.strategy
    k, rank = cfg.num_samples, strategy.rank
    device, dtype = strategy.device, strategy.dtype
    policy = engines.policy_lmm
    feats = encode_prompts(processor, prompts)
    key = f"{cfg.seed}:{iteration}"

    # 1. Sample (the policy's weights gathered once under ZeRO-3 when they fit); ReMax's greedy too.
    generator = torch.Generator(device=device).manual_seed(stable_seed(cfg.seed, "rollout", iteration, rank))
    t0 = time.time()
    greedy = None
    with strategy.generation_weights(engines.policy, gather=cfg.gather_for_generation) as synced:
        gen_cfg = GenerationConfig(
            max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature,
            top_p=cfg.top_p, top_k=cfg.top_k, synced_gpus=synced,
        )  # fmt: skip
        generation = generate(
            policy, processor, feats, gen_cfg, num_samples=k, return_logprobs=True,
            batch_size=cfg.generation_batch_size, generator=generator,
        )  # fmt: skip
        if cfg.estimator == "remax":
            greedy = generate(
                policy, processor, feats, replace(gen_cfg, do_sample=False),
                batch_size=cfg.generation_batch_size,
            )  # fmt: skip
    t_sample = time.time() - t0
    lengths = torch.tensor([len(r) for r in generation.ids], dtype=torch.long)
    finished = torch.tensor(generation.finished, dtype=torch.bool)

    # 2. Score in the training layout: old log-probs, reference log-probs, values (PPO).
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
    mask = sequence_mask([len(r) for r in responses], width)
    old_lp, ref_lp, values = _stack(old, width), _stack(ref, width), _stack(val, width)
    gap = 0.0  # the sampler's (temperature-1) log-probs against the training-layout forward's
    for sampled, scored in zip(generation.logprobs if cfg.temperature == 1.0 else [], old, strict=False):
        if len(sampled):
            gap = max(gap, float((sampled - scored[: len(sampled)]).abs().max()))

    # 3. Rewards: reward model and functions on the text + shaping terms. Collectives (whitening,
    # GRPO's batch std) run on the strategy's device (NCCL takes no CPU tensors).
    terms, skipped = _rewarded(
        rewards, prompts, generation.texts, lengths, finished, k, key, cfg, device, dtype
    )
    total = terms["total"].float()
    kl = kl_penalty(old_lp, ref_lp, cfg.kl_estimator, cfg.kl_clamp_min) * mask
    # KL in the reward takes the reward's scale (LLaVA-RLHF multiplies the whole shaped per-token
    # reward by 10 when it does not whiten); whitening (AlpacaFarm's whiten_rewards, the mean kept)
    # replaces the scale.
    kl_scale = 1.0 if cfg.whiten_rewards else cfg.shaping.reward_scale
    if cfg.whiten_rewards:
        ones = torch.ones_like(total).unsqueeze(1)
        total = whiten(total.unsqueeze(1).to(device), ones.to(device), shift_mean=False).squeeze(1).cpu()
    stats: dict[str, float] = {}

    # 4. Advantages: GAE (PPO) or a critic-free baseline.
    if cfg.estimator == "ppo":
        token_r = token_rewards(total, kl * kl_scale, mask, kl_coef, cfg.reward_position)
        advantages, returns = gae(token_r, values, mask, cfg.gamma, cfg.lam)
        advantages = whiten(advantages.to(device), mask.to(device)).cpu()
    else:
        sequence_reward = total.clone()
        if cfg.kl_mode == "reward":
            sequence_reward -= kl_coef * kl_scale * kl.sum(1)
        if cfg.estimator == "remax":
            g_lengths = torch.tensor([len(r) for r in greedy.ids], dtype=torch.long)
            g_finished = torch.tensor(greedy.finished, dtype=torch.bool)
            g_terms, g_skipped = _rewarded(
                rewards, prompts, greedy.texts, g_lengths, g_finished, 1, key, cfg, device, dtype
            )
            skipped = sorted(set(skipped) | set(g_skipped))  # no baseline: that sample is not trained
            baseline = g_terms["total"].float()
            adv = remax_advantages(sequence_reward, baseline)
            stats["remax/greedy_reward"] = float(baseline.mean())
            stats["remax/sample_minus_greedy"] = float((total - baseline).mean())
            stats["baseline/mean"] = float(baseline.mean())
        else:
            grouped = sequence_reward.view(-1, k).clone()
            if skipped:  # a failed response neither shifts its group's mean nor trains
                failed = torch.zeros(grouped.numel(), dtype=torch.bool)
                failed[skipped] = True
                failed = failed.view(-1, k)
                ok = (~failed).float()
                fill = (grouped * ok).sum(1, keepdim=True) / ok.sum(1, keepdim=True).clamp(min=1)
                grouped = torch.where(failed, fill.expand_as(grouped), grouped)
            if cfg.estimator == "rloo":
                adv = rloo_advantages(grouped).reshape(-1)
                stats["baseline/mean"] = float((grouped.reshape(-1) - adv).mean())
            else:
                adv = grpo_advantages(grouped.to(device), cfg.scale_rewards).reshape(-1).cpu()
                stats["groups/reward_std"] = float(grouped.std(1).mean()) if k > 1 else 0.0
            stats["groups/equal_rewards"] = equal_reward_share(grouped)
        token_r = torch.zeros_like(mask)
        advantages, returns = broadcast_to_tokens(adv, mask), torch.zeros_like(mask)
    if skipped:  # a reward function failed on them (reward_fn_errors: skip): no gradient
        mask[skipped] = 0.0
        advantages[skipped] = 0.0
    t_score = time.time() - t0
    engines.train()

    raw_kl = ((old_lp - ref_lp) * mask).sum(1)  # exact sequence log-ratio of the samples
    stats.update({
        "rollout/tok_s": float(lengths.sum()) / max(t_sample, 1e-9),
        "rollout/sample_s": t_sample,
        "rollout/score_s": t_score,
        "rollout/logprob_gap": gap,
        "response/length": float(lengths.float().mean()),
        # tokens this rank decoded (ReMax's greedy responses included); train/ppo.py sums the ranks
        "rollout/generated_tokens": float(lengths.sum()) + (sum(len(r) for r in greedy.ids) if greedy else 0),
        "response/no_eos": float((~finished).float().mean()),
        "kl/sequence": float(raw_kl.mean()),
        "kl/penalty": float((kl.sum(1)).mean()),
        "kl/coef": kl_coef,
        "reward/skipped": float(len(skipped)),
        **{f"reward/{name}": float(v.float().mean()) for name, v in terms.items()},
    })  # fmt: skip
    if engines.critic:
        stats["values/mean"] = float(masked_mean(values, mask))
    return Rollout(
        prompts, groups, generation.texts, finished, lengths, mask, old_lp, ref_lp, values,
        total, terms, token_r, advantages, returns, stats,
    )  # fmt: skip
