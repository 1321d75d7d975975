"""Log-probs of responses (per token and summed), computed with the least work: the policy/reference module.

:class:`PreferenceModel` is what the DeepSpeed engine wraps for DPO. One call embeds the batch
(the encoder and projector run once over all its images/video frames), runs the LLM on the
shared-prefix rows, applies the LM head **only at scored positions** and returns summed
log-probs per sequence. With an online reference it also scores the batch under the reference in
the same call (no gradient):

* ``lora`` — the same LLM with its LoRA adapter disabled, on the same input embeddings (the
  embedding table is frozen under LoRA; the encoder/projector features are the current ones).
* ``frozen`` — a frozen copy of the start model held inside the module (so ZeRO-3 shards it as
  well); when encoder and projector are frozen it reuses the policy's media features instead of
  encoding the media again.

The reference-free ``none`` mode is used with precomputed reference log-probs
(:mod:`mmalign.preference.ref_cache`). Batches are groups of K responses
(:mod:`mmalign.preference.batch`); every result comes per scored token ``(N,)`` and summed per
response ``(G, K)``. :func:`group_logps` scores a batch with any LMM (e.g. an RL policy or
reference) without this module.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from mmalign.models.lmm import LMM
from mmalign.preference.batch import PreferenceBatch
from mmalign.training.parts import reference_mode

Reference = Literal["none", "lora", "frozen"]


def _decoder_and_head(llm: nn.Module) -> tuple[nn.Module, nn.Module]:
    return llm.get_decoder(), llm.get_output_embeddings()


def _scored_log_softmax(
    llm: nn.Module,
    embeds: torch.Tensor,
    batch: PreferenceBatch,
    response_logits_only: bool,
    temperature: float = 1.0,
) -> torch.Tensor:
    """``(N, V)`` float32 log-softmax of ``logits / temperature`` at the N scored positions."""
    if response_logits_only:
        decoder, head = _decoder_and_head(llm)
        hidden = decoder(
            inputs_embeds=embeds,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        ).last_hidden_state
        logits = head(hidden[batch.pred_rows, batch.pred_cols]).float()  # (N, V)
        return (logits / temperature if temperature != 1.0 else logits).log_softmax(-1)
    logits = llm(
        inputs_embeds=embeds,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    ).logits
    logits = logits.float() / temperature if temperature != 1.0 else logits.float()
    return logits.log_softmax(-1)[batch.pred_rows, batch.pred_cols]  # full (B, L, V) first


def score_tokens(
    llm: nn.Module,
    embeds: torch.Tensor,
    batch: PreferenceBatch,
    response_logits_only: bool = True,
    with_entropy: bool = False,
    temperature: float = 1.0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each scored token ``(N,)`` (float32).

    Args:
        llm: a Hugging Face causal LM (``get_decoder`` / ``get_output_embeddings``).
        embeds: ``(B, L, D)`` input embeddings.
        response_logits_only: apply the LM head only at the N scored positions; ``False`` computes
            full ``(B, L, V)`` logits and a full log-softmax, as peers do (for ablations).
        with_entropy: also return the entropy (nats) of the model's distribution at each scored
            position ``(N,)``, without gradient (an RL metric).
        temperature: score ``softmax(logits / T)`` — the distribution an RL rollout sampled from
            at temperature T (as TRL and LLaVA-RLHF score their samples).
    """
    logps = _scored_log_softmax(llm, embeds, batch, response_logits_only, temperature)
    chosen = logps.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return chosen
    with torch.no_grad():
        entropy = -(logps.exp() * logps).sum(-1)
    return chosen, entropy


def sequence_sums(token_logps: torch.Tensor, batch: PreferenceBatch) -> torch.Tensor:
    """Summed log-probs per sequence, ``(num_pairs, num_responses)``."""
    n = batch.num_pairs * batch.num_responses
    sums = token_logps.new_zeros(n).index_add(0, batch.seq_index, token_logps)
    return sums.view(batch.num_pairs, batch.num_responses)


def group_logps(
    lmm: LMM,
    batch: PreferenceBatch,
    embeds: torch.Tensor | None = None,
    response_logits_only: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of every scored token ``(N,)`` and their sums per response ``(G, K)`` (float32).

    Args:
        lmm: the model (its gradient flows unless called under ``torch.no_grad``).
        batch: groups in either layout (:func:`~mmalign.preference.batch.collate_shared`).
        embeds: ``(B, L, D)`` input embeddings already computed (media features in place); by
            default ``lmm.embed`` runs once on the batch.

    Returns:
        ``(token_logps, sums)``; ``batch.split_by_sequence(token_logps)`` gives per-response pieces.
    """
    if embeds is None:
        embeds = lmm.embed(batch.input_ids, batch.images, batch.videos)
    tokens = score_tokens(lmm.llm, embeds, batch, response_logits_only)
    return tokens, sequence_sums(tokens, batch)


class PreferenceModel(nn.Module):
    """The policy (and optionally a frozen reference) scoring preference batches.

    Args:
        policy: the trained LMM.
        reference: ``none`` | ``lora`` | ``frozen`` (see module docstring).
        ref_model: the frozen reference LMM for ``frozen``.
        media_frozen: encoder and projector do not train (then ``frozen`` reuses media features).
        response_logits_only: see :func:`score_tokens`.
    """

    def __init__(
        self,
        policy: LMM,
        reference: Reference = "none",
        ref_model: LMM | None = None,
        media_frozen: bool = True,
        response_logits_only: bool = True,
    ) -> None:
        super().__init__()
        if reference == "frozen" and ref_model is None:
            raise ValueError("reference='frozen' needs ref_model")
        if reference != "frozen" and ref_model is not None:
            raise ValueError(f"ref_model given but reference={reference!r}")
        self.policy = policy
        self.ref_model = ref_model
        if ref_model is not None:
            ref_model.requires_grad_(False)
            ref_model.eval()
        self.reference = reference
        self.media_frozen = media_frozen
        self.response_logits_only = response_logits_only
        self.temperature = 1.0  # RL scores its samples at the sampling temperature (set by the trainer)

    @property
    def always_run_media(self) -> bool:
        return self.policy.always_run_media

    @always_run_media.setter
    def always_run_media(self, value: bool) -> None:
        self.policy.always_run_media = value
        if self.ref_model is not None:
            self.ref_model.always_run_media = value

    def train(self, mode: bool = True) -> PreferenceModel:
        super().train(mode)
        if self.ref_model is not None:
            self.ref_model.eval()
        return self

    def forward(
        self, batch: PreferenceBatch, with_reference: bool = True, with_entropy: bool = False
    ) -> dict[str, torch.Tensor]:
        """Score ``batch``.

        Returns:
            ``policy``: ``(P, K)`` summed log-probs (with grad); ``token_logps``: ``(N,)`` the
            same per scored token; with an online reference and ``with_reference`` also
            ``reference`` ``(P, K)`` and ``reference_token_logps`` ``(N,)``, without grad; with
            ``with_entropy`` also ``entropy`` ``(N,)`` (nats, no grad).
        """
        embeds = self.policy.embed(batch.input_ids, batch.images, batch.videos)
        scored = score_tokens(
            self.policy.llm, embeds, batch, self.response_logits_only, with_entropy, self.temperature
        )
        tokens, entropy = scored if with_entropy else (scored, None)
        out = {"policy": sequence_sums(tokens, batch), "token_logps": tokens}
        if entropy is not None:
            out["entropy"] = entropy
        if with_reference and self.reference != "none":
            ref_tokens = self.reference_token_logps(batch, embeds)
            out["reference"] = sequence_sums(ref_tokens, batch)
            out["reference_token_logps"] = ref_tokens
        return out

    @torch.no_grad()
    def reference_logps(
        self, batch: PreferenceBatch, policy_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(P, K)`` summed reference log-probs (the policy's embeddings are reused where exact)."""
        return sequence_sums(self.reference_token_logps(batch, policy_embeds), batch)

    @torch.no_grad()
    def reference_token_logps(
        self, batch: PreferenceBatch, policy_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(N,)`` reference log-prob of every scored token (see :meth:`reference_logps`).

        Raises:
            ValueError: the model has no online reference (``reference="none"``).
        """
        if self.reference == "lora":
            embeds = policy_embeds.detach() if policy_embeds is not None else None
            with reference_mode(self.policy):
                if embeds is None:
                    embeds = self.policy.embed(batch.input_ids, batch.images, batch.videos)
                return score_tokens(
                    self.policy.llm, embeds, batch, self.response_logits_only, temperature=self.temperature
                )
        if self.reference != "frozen":
            raise ValueError("no online reference in this model")
        ref = self.ref_model
        if self.media_frozen and policy_embeds is not None:
            # Same encoder/projector weights: copy the media slots from the policy's embeddings.
            text = ref.llm.get_input_embeddings()(batch.input_ids)
            media = batch.input_ids == ref.cfg.image_token_id
            if ref.cfg.video_token_id >= 0:
                media |= batch.input_ids == ref.cfg.video_token_id
            embeds = torch.where(media.unsqueeze(-1), policy_embeds.detach().to(text.dtype), text)
        else:
            embeds = ref.embed(batch.input_ids, batch.images, batch.videos)
        return score_tokens(ref.llm, embeds, batch, self.response_logits_only, temperature=self.temperature)
