"""Policy and value as two LoRA adapters on ONE frozen LMM base — LLaVA-RLHF's memory layout — and
the engines a PPO run trains, behind one interface whichever layout it uses.

LLaVA-RLHF (https://arxiv.org/abs/2309.14525, its ``RLHF/models``) keeps one (4-bit) base and puts
policy, value, reference and reward on it as adapters. :class:`SharedActorCritic` does this for
policy and value: the peft model holds the policy adapter (``default``) and a ``value`` adapter;
the reference is the base with adapters disabled; the value head reads the value adapter's hidden
states at every response token. One module, one DeepSpeed engine, one AdamW over both adapters and
the head, one backward of ``policy_loss + vf_coef · value_loss`` (as the authors' single optimizer).

peft's ``set_adapter`` also flips ``requires_grad`` (only the active adapter trains); the switch here
puts every flag back right away, so both adapters stay trainable and the engine's parameter set
never changes — the forward uses only the active adapter's weights, so the gradient reaches the
right one.

:class:`PPOEngines` gives the PPO loop the same calls for both layouts: separate policy and value
engines (full or LoRA, the value trunk from the reward model) or the shared one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mmalign.models.heads import ScalarHead
from mmalign.models.lmm import LMM
from mmalign.preference.batch import PreferenceBatch
from mmalign.preference.scoring import score_tokens, sequence_sums
from mmalign.training.parts import is_lora, reference_mode
from mmalign.training.strategy import Strategy

POLICY_ADAPTER = "default"
VALUE_ADAPTER = "value"


def is_value_adapter(name: str) -> bool:
    """A parameter of the value adapter (peft names them ``…lora_A.value.weight`` etc.)."""
    return any(
        f"{part}.{VALUE_ADAPTER}." in name
        for part in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")
    )


class SharedActorCritic(nn.Module):
    """A LoRA LMM whose ``default`` adapter is the policy and ``value`` adapter (+ head) the critic.

    Args:
        lmm: the policy LMM after :func:`~mmalign.training.parts.apply_lora` (a peft LLM).
        head: the value head (default: a zero-initialised :class:`ScalarHead`).
        value_adapter: a peft adapter folder to start the value adapter from (e.g. a LoRA reward
            model's ``final_adapter``); default: a new adapter with the policy's LoRA config
            (LoRA B starts at zero, so the value trunk starts as the base).
        response_logits_only: apply the LM head only at scored positions.

    Raises:
        ValueError: ``lmm`` has no LoRA adapter.
    """

    def __init__(
        self,
        lmm: LMM,
        head: ScalarHead | None = None,
        value_adapter: str | None = None,
        response_logits_only: bool = True,
    ) -> None:
        super().__init__()
        if not is_lora(lmm):
            raise ValueError("the shared layout needs a LoRA policy (lora.enabled)")
        peft_model = lmm.llm
        if value_adapter is not None:
            peft_model.load_adapter(value_adapter, adapter_name=VALUE_ADAPTER, is_trainable=True)
        else:
            peft_model.add_adapter(VALUE_ADAPTER, peft_model.peft_config[POLICY_ADAPTER])
        with self._restore_flags(peft_model):
            peft_model.set_adapter(POLICY_ADAPTER)
        self.lmm = lmm
        ref = lmm.llm.get_input_embeddings().weight
        if head is None:
            head = ScalarHead(ref.shape[1], zero_init=True, device=ref.device)
        elif head.weight.shape[1] != ref.shape[1]:
            raise ValueError(
                f"the value head reads {head.weight.shape[1]} features, the LMM has {ref.shape[1]}"
            )
        self.head = head
        self.response_logits_only = response_logits_only
        self.temperature = 1.0  # the sampling temperature the policy's samples are scored at

    @property
    def policy(self) -> LMM:
        """The LMM (the policy adapter is active outside :meth:`forward` with ``role="value"``)."""
        return self.lmm

    @property
    def always_run_media(self) -> bool:
        return self.lmm.always_run_media

    @always_run_media.setter
    def always_run_media(self, value: bool) -> None:
        self.lmm.always_run_media = value

    @staticmethod
    @contextmanager
    def _restore_flags(module: nn.Module) -> Iterator[None]:
        flags = [(p, p.requires_grad) for p in module.parameters()]
        try:
            yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)

    @contextmanager
    def adapter(self, name: str) -> Iterator[None]:
        """Run with adapter ``name`` active; ``requires_grad`` flags are left as they were."""
        llm = self.lmm.llm
        with self._restore_flags(llm):
            llm.set_adapter(name)
        try:
            yield
        finally:
            with self._restore_flags(llm):
                llm.set_adapter(POLICY_ADAPTER)

    def forward(
        self,
        batch: PreferenceBatch,
        role: str = "policy",
        with_reference: bool = True,
        with_entropy: bool = False,
    ) -> dict[str, torch.Tensor] | torch.Tensor:
        """``role="policy"``: as :meth:`PreferenceModel.forward` with a LoRA reference (``policy``,
        ``token_logps``, ``reference``, ``reference_token_logps``, ``entropy``); ``role="value"``:
        the values ``(N,)`` at the scored tokens (float32).

        Raises:
            ValueError: an unknown role.
        """
        if role == "value":
            with self.adapter(VALUE_ADAPTER):
                embeds = self.lmm.embed(batch.input_ids, batch.images, batch.videos)
                hidden = self.lmm.llm.get_decoder()(
                    inputs_embeds=embeds,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids,
                    use_cache=False,
                ).last_hidden_state
                return self.head(hidden[batch.pred_rows, batch.pred_cols])
        if role != "policy":
            raise ValueError(f"role must be 'policy' or 'value', got {role!r}")
        embeds = self.lmm.embed(batch.input_ids, batch.images, batch.videos)
        scored = score_tokens(
            self.lmm.llm, embeds, batch, self.response_logits_only, with_entropy, self.temperature
        )
        tokens, entropy = scored if with_entropy else (scored, None)
        out = {"policy": sequence_sums(tokens, batch), "token_logps": tokens}
        if entropy is not None:
            out["entropy"] = entropy
        if with_reference:
            # peft re-activates the adapters on leaving disable_adapter through set_adapter, which
            # freezes the inactive (value) adapter: the flags are put back here too.
            with torch.no_grad(), self._restore_flags(self.lmm.llm), reference_mode(self.lmm):
                ref = score_tokens(
                    self.lmm.llm,
                    embeds.detach(),
                    batch,
                    self.response_logits_only,
                    temperature=self.temperature,
                )
            out["reference"] = sequence_sums(ref, batch)
            out["reference_token_logps"] = ref
        return out


@dataclass
class PPOEngines:
    """The trained engines of an RL run, called the same way in every layout.

    Attributes:
        strategy: the run's strategy (backward / step).
        policy: the engine of a :class:`~mmalign.preference.scoring.PreferenceModel` (separate
            layout, or no critic) or of a :class:`SharedActorCritic` (shared layout).
        value: the engine of a value :class:`~mmalign.models.heads.ScalarModel` (``read="tokens"``)
            in the separate layout; ``None`` otherwise.
        shared: the policy engine holds the value adapter and head too.
    """

    strategy: Strategy
    policy: Any
    value: Any = None
    shared: bool = False

    @property
    def critic(self) -> bool:
        """A value model is trained."""
        return self.shared or self.value is not None

    @property
    def policy_lmm(self) -> LMM:
        """The LMM that samples (policy adapter active)."""
        return self.policy.module.policy

    def policy_scores(
        self, batch: PreferenceBatch, with_reference: bool, with_entropy: bool = False
    ) -> dict[str, torch.Tensor]:
        """Policy (and reference) log-probs per scored token; see :meth:`PreferenceModel.forward`."""
        return self.policy(batch, with_reference=with_reference, with_entropy=with_entropy)

    def values(self, batch: PreferenceBatch) -> torch.Tensor:
        """``(N,)`` values at the scored tokens (zeros without a critic)."""
        if self.shared:
            return self.policy(batch, role="value")
        if self.value is not None:
            return self.value(batch)
        return torch.zeros(batch.targets.shape[0], device=batch.targets.device)

    def train(self, mode: bool = True) -> None:
        for engine in (self.policy, self.value):
            if engine is not None:
                engine.train(mode)

    def update(self, policy_loss: torch.Tensor, value_loss: torch.Tensor | None, vf_coef: float) -> None:
        """Backward and (at accumulation boundaries) step: one engine on ``policy_loss + vf_coef ·
        value_loss``, or each engine on its own loss (the value one scaled by ``vf_coef``), or the
        policy alone (no critic: ``value_loss`` None)."""
        s = self.strategy
        if value_loss is None:
            s.backward(policy_loss, self.policy)
            s.step(self.policy)
            return
        if self.shared:
            s.backward(policy_loss + vf_coef * value_loss, self.policy)
            s.step(self.policy)
            return
        s.backward(policy_loss, self.policy)
        s.step(self.policy)
        s.backward(vf_coef * value_loss, self.value)
        s.step(self.value)
