"""One training step of each preference method as a library function: DPO family / POVID and the
Bradley–Terry reward model. Used by ``train/dpo.py``, ``train/reward.py``, the benchmark against
TRL, and (later) i-SRT, which calls the DPO step directly.

A step is: forward the model (a DeepSpeed engine or the plain module — anything called as
``model(batch)``) on a shared-prefix :class:`~mmalign.preference.batch.PreferenceBatch`, compute the
loss with the pure functions of :mod:`mmalign.losses`, return ``(loss, metrics)``. Backward and the
optimizer step stay with the caller (:class:`~mmalign.training.strategy.Strategy`).
POVID's two-term loss is chosen by the config (``povid.noise_weight > 0``), never by the shape of
a tensor: a batch that does not carry the three responses POVID needs is an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mmalign.losses.dpo import dpo_loss, povid_loss, preference_metrics, sft_term
from mmalign.losses.reward import bradley_terry_loss, reward_metrics
from mmalign.preference.batch import PreferenceBatch, collate_shared, encode_pair
from mmalign.preference.config import DPOConfig
from mmalign.preference.formats import PreferencePair
from mmalign.preference.ref_cache import ReferenceCache, model_fingerprint, pair_key, precompute


def uses_povid(cfg: DPOConfig) -> bool:
    """POVID's two-term objective (``[chosen | rejected | y_noise]`` rows) vs plain DPO pairs."""
    return cfg.povid.noise_weight > 0


def preference_loss(
    policy: torch.Tensor, reference: torch.Tensor, lengths: torch.Tensor, cfg: DPOConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """The DPO-family / POVID loss of a batch from summed log-probs (pure).

    Args:
        policy: ``(P, K)`` summed policy log-probs (K = 2: chosen, rejected; K = 3 with POVID's
            ``y_noise``), with grad.
        reference: ``(P, K)`` reference log-probs (no grad).
        lengths: ``(P, K)`` scored tokens per response (length averaging, the SFT term).
        cfg: β, loss type, label smoothing, length averaging, SFT weight and POVID's weights.

    Returns:
        The mean loss (scalar) and float metrics (rewards, accuracy, margins; ``noise/…`` for
        POVID's second term; ``sft_nll`` with an SFT term).

    Raises:
        ValueError: K does not match the method the config names.
    """
    want = 3 if uses_povid(cfg) else 2
    if policy.shape[1] != want:
        method = "POVID (povid.noise_weight > 0)" if want == 3 else "DPO"
        raise ValueError(f"{method} needs {want} responses per prompt, the batch has {policy.shape[1]}")
    summed = policy
    if cfg.average_log_prob:
        policy, reference = policy / lengths.clamp(min=1), reference / lengths.clamp(min=1)
    kw = {"beta": cfg.beta, "loss_type": cfg.loss_type, "label_smoothing": cfg.label_smoothing}
    if want == 3:
        losses, term, noise_term = povid_loss(
            *policy.unbind(1),
            *reference.unbind(1),
            inject_weight=cfg.povid.inject_weight,
            noise_weight=cfg.povid.noise_weight,
            **kw,
        )
        metrics = {**preference_metrics(term), **preference_metrics(noise_term, "noise/")}
    else:
        term = dpo_loss(policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1], **kw)
        losses, metrics = term.losses, preference_metrics(term)
    loss = losses.mean()
    if cfg.sft_weight:
        sft = sft_term(summed[:, 0], lengths[:, 0]).mean()
        loss = loss + cfg.sft_weight * sft
        metrics["sft_nll"] = float(sft.detach())
    return loss, metrics


def preference_step(
    model: Callable[[PreferenceBatch], dict[str, torch.Tensor]],
    batch: PreferenceBatch,
    reference: torch.Tensor | None,
    cfg: DPOConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward a :class:`~mmalign.preference.scoring.PreferenceModel` (or its engine) and compute
    the preference loss.

    Args:
        model: called as ``model(batch)``; returns ``policy`` ``(P, K)`` log-probs and, with an
            online reference, ``reference``.
        batch: the shared-prefix rows, on the model's device.
        reference: ``(P, K)`` precomputed reference log-probs, or None to use the model's online
            reference (``frozen`` / ``lora``).
        cfg: the run's :class:`~mmalign.preference.config.DPOConfig`.

    Returns:
        ``(loss, metrics)`` — the loss is not yet backpropagated.
    """
    result = model(batch)
    policy = result["policy"]
    if reference is None:
        if "reference" not in result:
            raise ValueError("no reference log-probs: pass precomputed ones or use an online reference")
        reference = result["reference"]
    lengths = batch.lengths().view(policy.shape).to(policy.device)
    return preference_loss(policy, reference.to(policy.device), lengths, cfg)


def reward_step(
    model: Callable[[PreferenceBatch], torch.Tensor],
    batch: PreferenceBatch,
    margin: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley–Terry step of a :class:`~mmalign.preference.reward_model.RewardModel` (or its engine).

    Args:
        model: called as ``model(batch)`` → ``(P, 2)`` rewards (chosen, rejected).
        margin: ``(P,)`` or a float margin ``m`` in ``−log σ(r_w − r_l − m)``.

    Returns:
        The mean loss and the metrics of :func:`~mmalign.losses.reward.reward_metrics`.
    """
    rewards = model(batch)
    loss = bradley_terry_loss(rewards[:, 0], rewards[:, 1], margin).mean()
    return loss, reward_metrics(rewards[:, 0], rewards[:, 1])


def precomputed_reference(
    strategy: Any,
    model: Callable[..., dict[str, torch.Tensor]],
    processor: Any,
    pairs: Sequence[PreferencePair],
    cfg: DPOConfig,
    cache_dir: str | Path,
) -> tuple[ReferenceCache, list[str], str]:
    """Reference log-probs of every pair with the start weights, computed once (each rank its
    share, cached on disk by content hash) before training and before any resume.

    Args:
        strategy: the run's :class:`~mmalign.training.strategy.Strategy` (rank, barriers).
        model: the prepared :class:`~mmalign.preference.scoring.PreferenceModel` engine; it is
            left in eval mode (the training loop puts it back in train mode).
        processor: the run's ``MultimodalProcessor``.
        cfg: ``model`` (fingerprinted), ``max_length``, precision and micro-batch size.
        cache_dir: the cache folder (shared by runs over the same model and data).

    Returns:
        The cache, each pair's key (index-aligned with ``pairs``), and a log line.
    """
    fingerprint = model_fingerprint(cfg.model) if Path(cfg.model).is_dir() else cfg.model
    keys = [
        pair_key(
            encode_pair(processor, p, cfg.max_length, load_media=False),
            p,
            fingerprint,
            cfg.strategy.precision,
        )
        for p in pairs
    ]
    cache = ReferenceCache(cache_dir)
    strategy.barrier()
    dev, dtype = strategy.device, strategy.dtype

    def score(indices: list[int]) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
        enc = [encode_pair(processor, pairs[i], cfg.max_length) for i in indices]
        batch = collate_shared(enc, processor.pad_token_id).to(dev, dtype)
        with torch.no_grad():
            out = model(batch, False)
        # sums for DPO, and each response's per-token log-probs (cached too: token-level uses)
        return out["policy"], batch.split_by_sequence(out["token_logps"].float().cpu())

    model.eval()
    t0, rank = time.time(), strategy.rank
    n = precompute(
        cache, keys, score, cfg.strategy.micro_batch_size, rank, strategy.world_size, f"rank{rank}-{int(t0)}"
    )
    strategy.barrier()
    cache.reload()
    note = f"reference log-probs: {int(strategy.all_reduce_sum(n))} computed in {time.time() - t0:.1f}s, {len(cache)} cached"
    return cache, keys, note


def reward_accuracy(
    strategy: Any,
    model: Callable[[PreferenceBatch], torch.Tensor],
    encode: Callable[[PreferencePair], Any],
    pairs: Sequence[PreferencePair],
    pad_token_id: int,
    micro_batch_size: int,
) -> float:
    """Share of ``pairs`` whose chosen response the reward model scores higher, over all ranks.

    Each rank scores its share; every rank runs the same number of forwards (a rank with none
    left scores a placeholder and counts nothing), so ZeRO-3 never waits on a rank that stopped.
    ``encode`` turns a pair into what :func:`~mmalign.preference.batch.collate_shared` takes.
    """
    mine = list(pairs[strategy.rank :: strategy.world_size])
    per_rank = -(-len(pairs) // strategy.world_size)
    correct = 0.0
    for start in range(0, per_rank, micro_batch_size):
        chunk = mine[start : start + micro_batch_size]
        batch = collate_shared([encode(p) for p in chunk or pairs[:1]], pad_token_id)
        with torch.no_grad():
            r = model(batch.to(strategy.device, strategy.dtype))
        correct += float((r[:, 0] > r[:, 1]).float().sum()) if chunk else 0.0
    return strategy.all_reduce_sum(correct) / len(pairs)
