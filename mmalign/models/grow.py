"""Depth growth of a trained causal LM by identity blocks (LLaMA-Pro's block expansion).

``grow_llm`` appends copies of the last decoder layer whose output projections (attention
``o_proj`` and MLP ``down_proj``) are zero: each new block adds nothing to the residual stream, so
the grown model computes exactly what the original did, and fine-tuning then uses the new depth.
LLaMA-Pro (Wu et al., 2024) interleaves such blocks to add knowledge without forgetting; here the
use is one more hop of attention: the tiny ShapeWorld model answered the *second* word of
``bottom left`` worst, a word that must be looked up again one token after the question ended.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def decoder_layers(llm: nn.Module) -> nn.ModuleList:
    """The decoder-layer list of a Llama-family ``*ForCausalLM`` (``llm.model.layers``)."""
    layers = getattr(getattr(llm, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"cannot grow {type(llm).__name__}: no model.layers list of decoder layers")
    return layers


def grow_llm(llm: nn.Module, n_new: int) -> None:
    """Append ``n_new`` identity blocks (copies of the last layer, output projections zeroed), in place.

    Updates ``config.num_hidden_layers`` (and ``config.layer_types`` if the model has one) so that
    ``save_pretrained`` / ``from_pretrained`` round-trip the grown model.

    Raises:
        ValueError: ``n_new`` < 1, the model is not Llama-like (``model.layers`` with
            ``self_attn.o_proj`` and ``mlp.down_proj``), or it carries a LoRA adapter (grow first).
    """
    if n_new < 1:
        raise ValueError(f"grow by ≥ 1 layer, got {n_new}")
    if hasattr(llm, "peft_config"):
        raise ValueError("grow the LLM before adding LoRA adapters")
    layers = decoder_layers(llm)
    last = layers[-1]
    for name in ("self_attn.o_proj", "mlp.down_proj"):
        if not isinstance(last.get_submodule(name), nn.Linear):
            raise ValueError(f"cannot grow {type(llm).__name__}: its decoder layer has no {name} linear")
    cfg = llm.config
    for _ in range(n_new):
        block = copy.deepcopy(last)
        with torch.no_grad():
            for name in ("self_attn.o_proj", "mlp.down_proj"):
                proj = block.get_submodule(name)
                proj.weight.zero_()
                if proj.bias is not None:
                    proj.bias.zero_()
        index = len(layers)
        if hasattr(block.self_attn, "layer_idx"):
            block.self_attn.layer_idx = index  # its slot in the KV cache
        layers.append(block)
    cfg.num_hidden_layers = len(layers)
    types = getattr(cfg, "layer_types", None)
    if types:
        cfg.layer_types = list(types) + [types[-1]] * n_new
