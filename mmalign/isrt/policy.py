"""The iterate π_t as the sampling stages hold it: a frozen engine (ZeRO-3 partitioned when the run
is), the library's one generation path and the training-layout scorer.

:class:`FrozenPolicy` wraps a :class:`~mmalign.preference.scoring.PreferenceModel` (reference
``none``) in :meth:`Strategy.prepare_frozen`, so scoring calls the same module the DPO engine
trains — the log-probs stored with the pairs are what DPO's forward computes at π_t. Generation
runs :func:`mmalign.training.generation.generate` inside :meth:`Strategy.generation_weights`
(``synced_gpus`` unless the weights are gathered once), as the RL rollout does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from mmalign.data.processor import MultimodalProcessor
from mmalign.isrt.prompts import ClipCache
from mmalign.models.checkpoint import load_model
from mmalign.models.decoding import GenerationConfig
from mmalign.preference.batch import EncodedGroup, collate_groups
from mmalign.preference.scoring import PreferenceModel
from mmalign.training.generation import Generation, generate


@dataclass
class FrozenPolicy:
    """A model held for sampling and scoring (no optimizer).

    Attributes:
        strategy: the run's strategy.
        engine: the frozen engine (or module below ZeRO-3) wrapping a ``PreferenceModel``.
        lmm: the LMM inside it.
        processor: its processor.
        clips: the clip cache every stage reads frames through.
        gather: gather the weights once for decoding (ZeRO-3).
    """

    strategy: Any
    engine: Any
    lmm: Any
    processor: MultimodalProcessor
    clips: ClipCache
    gather: bool = False

    @classmethod
    def load(
        cls, strategy: Any, path: str, name: str, template: str | None = None, gather: bool = False,
        processor: MultimodalProcessor | None = None,
    ) -> FrozenPolicy:  # fmt: skip
        """Load ``path`` and hold it as the frozen engine ``name`` (weights in the run's dtype)."""
        lmm, tokenizer = load_model(path, dtype=strategy.dtype, template=template)
        processor = processor or MultimodalProcessor.for_model(lmm, tokenizer)
        model = PreferenceModel(lmm, "none")
        engine = strategy.prepare_frozen(model, blank_media=[lmm], name=name)
        return cls(strategy, engine, lmm, processor, ClipCache(processor), gather)

    def release(self) -> None:
        """Drop the engine from the strategy (its memory is freed with the last reference)."""
        for name, held in list(self.strategy.frozen.items()):
            if held is self.engine:
                del self.strategy.frozen[name]
        self.engine = self.lmm = None

    def generate(
        self, feats: Sequence[dict[str, Any]], cfg: GenerationConfig, num_samples: int, seed: int
    ) -> Generation:
        """Responses to ``feats`` (one decoding batch), seeded by ``seed``.

        Every rank must call this as often as the others (ZeRO-3), each with as many prompts.
        """
        device = self.strategy.device
        generator = torch.Generator(device=device).manual_seed(seed % (2**63))
        with self.strategy.generation_weights(self.engine, gather=self.gather) as synced:
            cfg = replace(cfg, synced_gpus=synced)
            return generate(
                self.lmm, self.processor, list(feats), cfg, num_samples=num_samples,
                batch_size=len(feats), generator=generator,
            )  # fmt: skip

    @torch.no_grad()
    def score(self, groups: list[EncodedGroup]) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
        """Summed ``(G, K)`` and per-token ``[group][response] -> (n,)`` log-probs (float32, CPU)
        of the groups' responses, in one shared-prefix forward (every rank must call)."""
        s = self.strategy
        batch = collate_groups(groups, self.processor.pad_token_id).to(s.device, s.dtype)
        self.engine.eval()
        out = self.engine(batch, False)
        tokens = batch.split_by_sequence(out["token_logps"].float().cpu())
        return out["policy"].float().cpu(), tokens
