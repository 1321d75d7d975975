"""The update of one rollout: epochs × minibatches of clipped policy (and, for PPO, value) steps.

Proximal Policy Optimization (Schulman et al., https://arxiv.org/abs/1707.06347) as LLaVA-RLHF
(https://arxiv.org/abs/2309.14525) applies it to an LMM: per epoch the rollout's prompts are
shuffled (seeded by seed, iteration, epoch and rank, so a resumed run replays them), cut into
micro-batches of ``strategy.micro_batch_size`` prompts (each with its K responses in one
shared-prefix row); each micro-batch runs the policy forward → clipped policy loss and the value
forward → clipped value loss, then the backward; the engines step at their accumulation
boundaries (``strategy.grad_accum`` micro-batches). In the shared LoRA layout one engine
backpropagates ``policy_loss + vf_coef · value_loss`` (one AdamW, as the authors' code); with
separate policy and value engines each has its own AdamW and ``vf_coef`` scales the value
gradient before its own clipping. The critic-free estimators (ReMax, RLOO, GRPO) train the policy
alone on their sequence advantages (``clip_range: null`` is plain REINFORCE with the ratio), with
``β·KL(π‖π_ref)`` as a loss term when ``kl_mode: loss`` (GRPO; ``kl_estimator`` k3 by default).
"""

from __future__ import annotations

import time

import torch

from mmalign.losses.ppo import aggregate, kl_penalty, masked_mean, policy_loss, value_loss
from mmalign.preference.batch import collate_groups
from mmalign.rl.actor_critic import PPOEngines
from mmalign.rl.advantages import explained_variance
from mmalign.rl.config import PPOConfig
from mmalign.rl.rollout import Rollout, pad_by_sequence
from mmalign.utils import stable_seed


def _rows(rollout: Rollout, groups: list[int]) -> torch.Tensor:
    k = rollout.num_samples
    return torch.tensor([g * k + j for g in groups for j in range(k)], dtype=torch.long)


def dapo_denominators(
    tokens_per_micro: list[float], grad_accum: int, world_size: int, all_reduce_sum=lambda v: v
) -> list[float]:
    """DAPO's token-level normaliser for each micro-batch of one rank's update.

    The engine averages micro-batch losses over the ``grad_accum`` micro-batches of an optimizer
    step and over the ranks, so dividing each micro-batch's token sum by ``N_step / (grad_accum ·
    world)`` — ``N_step`` the real tokens of the whole optimizer step on all ranks — makes the
    step's loss the sum over all its tokens divided by their number, whatever the micro-batch
    split (TRL's ``loss_type="dapo"`` normalises by the tokens of the whole accumulated batch;
    DAPO, https://arxiv.org/abs/2503.14476). A per-micro-batch token mean would instead weigh a
    short micro-batch's tokens more.

    Args:
        tokens_per_micro: real (masked-in) tokens of each of this rank's micro-batches, in order.
        grad_accum: micro-batches per optimizer step.
        world_size: ranks.
        all_reduce_sum: sums a float over the ranks (every rank must call it equally often: one
            call per optimizer step).

    Returns:
        One denominator per micro-batch (> 0; an optimizer step without tokens gives 1).
    """
    out = []
    for start in range(0, len(tokens_per_micro), grad_accum):
        chunk = tokens_per_micro[start : start + grad_accum]
        total = all_reduce_sum(float(sum(chunk)))
        out += [max(total / (grad_accum * world_size), 1e-9) if total > 0 else 1.0] * len(chunk)
    return out


def ppo_update(
    engines: PPOEngines,
    rollout: Rollout,
    cfg: PPOConfig,
    iteration: int,
    pad_id: int,
    kl_coef: float = 0.0,
) -> dict[str, float]:
    """Train the policy (and the value model, for PPO) on one rollout; this rank's mean metrics.

    Every rank must hold the same number of prompts (equal micro-batch counts under ZeRO-3).

    Args:
        kl_coef: β of the KL loss term (``kl_mode: loss``).

    Returns:
        ``loss/policy``, ``loss/value`` and ``loss/kl`` (when trained), ``policy/clip_fraction``, ``policy/approx_kl``,
        ``policy/ratio_mean``, ``policy/ratio_first`` (mean |ratio − 1| on the first micro-batch:
        0 up to rounding, as the rollout scored with the same weights), ``policy/entropy``,
        ``value/clip_fraction``, ``value/explained_variance`` and ``train/tok_s``.
    """
    strategy = engines.strategy
    device, dtype = strategy.device, strategy.dtype
    n_groups, micro = len(rollout.groups), cfg.strategy.micro_batch_size
    sums: dict[str, float] = {}
    count, tokens, first_ratio = 0, 0, None
    t0 = time.time()
    for epoch in range(cfg.ppo_epochs):
        gen = torch.Generator().manual_seed(stable_seed(cfg.seed, "ppo", iteration, epoch, strategy.rank))
        order = torch.randperm(n_groups, generator=gen).tolist()
        starts = list(range(0, n_groups, micro))
        denominators = [None] * len(starts)  # dapo: the optimizer step's tokens, not the micro-batch's
        if cfg.loss_aggregation == "dapo":
            counts = [float(rollout.mask[_rows(rollout, order[s : s + micro])].sum()) for s in starts]
            denominators = dapo_denominators(
                counts, cfg.strategy.grad_accum, strategy.world_size, strategy.all_reduce_sum
            )
        for start, num_tokens in zip(starts, denominators, strict=True):
            groups = order[start : start + micro]
            batch = collate_groups([rollout.groups[g] for g in groups], pad_id).to(device, dtype)
            rows = _rows(rollout, groups)
            mask = rollout.mask[rows].to(device)
            width = mask.shape[1]
            out = engines.policy_scores(batch, with_reference=False, with_entropy=True)
            logprobs = pad_by_sequence(out["token_logps"], batch, width)
            old = rollout.old_logprobs[rows].to(device)
            adv = rollout.advantages[rows].to(device)
            agg = cfg.loss_aggregation
            pg, pg_stats = policy_loss(
                logprobs, old, adv, mask, cfg.clip_range, agg, max_tokens=cfg.max_new_tokens,
                num_tokens=num_tokens,
            )  # fmt: skip
            record: dict[str, float] = {}
            if cfg.kl_mode == "loss":
                ref = rollout.ref_logprobs[rows].to(device)
                kl = aggregate(
                    kl_penalty(logprobs, ref, cfg.kl_estimator), mask, agg, max_tokens=cfg.max_new_tokens,
                    num_tokens=num_tokens,
                )  # fmt: skip
                record["loss/kl"] = float(kl.detach())
                pg = pg + kl_coef * kl
            vf, vf_stats = None, {}
            if engines.critic:
                values = pad_by_sequence(engines.values(batch), batch, width)
                returns = rollout.returns[rows].to(device)
                old_values = rollout.values[rows].to(device)
                vf, vf_stats = value_loss(values, old_values, returns, mask, cfg.value_clip_range, agg)
            engines.update(pg, vf, cfg.vf_coef)

            with torch.no_grad():
                ratio_dev = masked_mean((logprobs.detach() - old).exp().sub(1).abs(), mask)
                entropy = float(out["entropy"].float().mean()) if out["entropy"].numel() else 0.0
            if first_ratio is None:
                first_ratio = float(ratio_dev)
            record.update({
                "loss/policy": float(pg.detach()),
                "policy/clip_fraction": float(pg_stats["clip_fraction"]),
                "policy/approx_kl": float(pg_stats["approx_kl"]),
                "policy/ratio_mean": float(pg_stats["ratio_mean"]),
                "policy/entropy": entropy,
            })  # fmt: skip
            if vf is not None:
                record["loss/value"] = float(vf.detach())
                record["value/clip_fraction"] = float(vf_stats["value_clip_fraction"])
            for key, value in record.items():
                sums[key] = sums.get(key, 0.0) + value
            count += 1
            tokens += int(batch.targets.numel())
    elapsed = time.time() - t0
    stats = {k: v / max(count, 1) for k, v in sums.items()}
    stats["policy/ratio_first"] = first_ratio or 0.0
    if engines.critic:
        stats["value/explained_variance"] = explained_variance(rollout.values, rollout.returns, rollout.mask)
    stats["train/tok_s"] = tokens / max(elapsed, 1e-9)
    stats["train/update_s"] = elapsed
    return stats
