"""Scalar heads on an LMM: reward models (one score per response) and value models (one per token).

A :class:`ScalarHead` is ``Linear(D → 1)`` on the LLM's last hidden states; :class:`ScalarModel`
composes it with an LMM and reads a batch of groups (:mod:`mmalign.preference.batch`):

* ``read="last"`` — the hidden state of each sequence's last token → ``(G, K)`` rewards, as
  LLaVA-RLHF's reward model (https://arxiv.org/abs/2309.14525) reads
  ``[conversation | response | reward prompt]``;
* ``read="tokens"`` — the hidden state at every scored position, i.e. the position that predicts
  response token t, → ``(N,)`` values V(s_t) aligned with the per-token log-probs of
  :func:`mmalign.preference.scoring.group_logps` (PPO's critic).

The head's state dict is ``{"weight": (1, D), "bias": (1,)}`` — the layout of ``nn.Linear(D, 1)``,
so heads saved as ``reward_head.safetensors`` load unchanged. A zero-initialised head makes
every score 0 at the start (our reward models; PPO's value head by default).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from mmalign.models.lmm import LMM
    from mmalign.preference.batch import PreferenceBatch

Read = Literal["last", "tokens"]


class ScalarHead(nn.Module):
    """``(..., D) → (...)`` float32: one linear unit.

    Args:
        hidden_size: D.
        zero_init: weight and bias start at 0 (scores 0); otherwise ``nn.Linear``'s default init.
        bias: learn a bias.
    """

    def __init__(
        self,
        hidden_size: int,
        zero_init: bool = True,
        bias: bool = True,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, hidden_size, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(1, dtype=dtype, device=device)) if bias else None
        if not zero_init:  # as nn.Linear.reset_parameters
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            if self.bias is not None:
                bound = 1 / math.sqrt(hidden_size)
                nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> ScalarHead:
        """A head with these weights (``weight`` ``(1, D)``, optional ``bias`` ``(1,)``).

        Raises:
            ValueError: a weight that is not ``(1, D)``.
        """
        weight = state["weight"]
        if weight.dim() != 2 or weight.shape[0] != 1:
            raise ValueError(f"a scalar head's weight is (1, D), got {tuple(weight.shape)}")
        head = cls(weight.shape[1], bias="bias" in state, dtype=weight.dtype)
        head.load_state_dict(state)
        return head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden.to(self.weight.dtype), self.weight, self.bias).squeeze(-1).float()


def hidden_states(lmm: LMM, batch: PreferenceBatch, embeds: torch.Tensor | None = None) -> torch.Tensor:
    """The LLM's last hidden states ``(B, L, D)`` on a group batch (its mask and position ids).

    Args:
        embeds: ``(B, L, D)`` input embeddings already computed; by default ``lmm.embed`` runs.
    """
    if embeds is None:
        embeds = lmm.embed(batch.input_ids, batch.images, batch.videos)
    return (
        lmm.llm.get_decoder()(
            inputs_embeds=embeds,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        )
    ).last_hidden_state


class ScalarModel(nn.Module):
    """An LMM with a scalar head: a reward model (``read="last"``) or a value model (``read="tokens"``).

    Args:
        lmm: the trunk (e.g. the SFT model, or the reward model's LMM for a value model).
        head: the head; by default a new :class:`ScalarHead` (``zero_init``).
        read: where the head reads (module docstring).
        zero_init: initialisation of a new head.

    Raises:
        ValueError: an unknown ``read``; a head whose width is not the LMM's hidden size.
    """

    def __init__(
        self, lmm: LMM, head: ScalarHead | None = None, read: Read = "last", zero_init: bool = True
    ) -> None:
        super().__init__()
        if read not in ("last", "tokens"):
            raise ValueError(f"read must be 'last' or 'tokens', got {read!r}")
        self.lmm = lmm
        ref = lmm.llm.get_input_embeddings().weight
        if head is None:
            head = ScalarHead(ref.shape[1], zero_init=zero_init, device=ref.device)
        elif head.weight.shape[1] != ref.shape[1]:  # e.g. a 13B reward model's head on a 7B trunk
            raise ValueError(
                f"the head reads {head.weight.shape[1]} features, the LMM's hidden size is {ref.shape[1]}"
            )
        self.head = head
        self.read = read

    @property
    def always_run_media(self) -> bool:
        return self.lmm.always_run_media

    @always_run_media.setter
    def always_run_media(self, value: bool) -> None:
        self.lmm.always_run_media = value

    def forward(self, batch: PreferenceBatch, embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of a group batch (float32).

        Args:
            embeds: precomputed input embeddings (e.g. shared with a policy forward).

        Returns:
            ``(G, K)`` for ``read="last"``; ``(N,)`` per scored token for ``read="tokens"``
            (``batch.split_by_sequence`` cuts them per response).
        """
        hidden = hidden_states(self.lmm, batch, embeds)
        if self.read == "last":
            scores = self.head(hidden[batch.last_rows, batch.last_cols])
            return scores.view(batch.num_pairs, batch.num_responses)
        return self.head(hidden[batch.pred_rows, batch.pred_cols])
