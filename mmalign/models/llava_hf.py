"""Import and export llava-hf checkpoints (transformers' ``LlavaForConditionalGeneration``).

Mapping (llava-hf → mmalign):

* ``model.vision_tower`` (a ``CLIPVisionModel``/``SiglipVisionModel``) → ``LMM.vision.model``;
  ``vision_feature_layer`` → ``feature_layer``; ``vision_feature_select_strategy`` ``"default"``
  (drop CLS) → ``select="patch"``, ``"full"`` → ``"cls_patch"``.
* ``model.multi_modal_projector.linear_1/linear_2`` → projector layers 0 / 2 (``mlp2x_gelu``).
* ``model.language_model`` + ``lm_head`` → an ``AutoModelForCausalLM`` built from ``text_config``.
* ``image_token_index`` → ``LMMConfig.image_token_id``.
* the processor (pixels, chat template, image-token count) → :mod:`mmalign.models.llava_hf_processor`;
  an export loads with ``AutoProcessor.from_pretrained`` and gives mmalign's inputs.

Loading goes through ``LlavaForConditionalGeneration.from_pretrained``, so every checkpoint layout
transformers reads (including the older ``language_model.model.*`` keys) imports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mmalign.data.processor import stop_token_ids
from mmalign.models.checkpoint import add_media_tokens, default_image_processor
from mmalign.models.llava_hf_processor import (
    build_llava_processor,
    image_processor_config_from_hf,
    write_readme,
)
from mmalign.models.lmm import LMM, LMMConfig
from mmalign.models.projector import build_projector, projector_depth
from mmalign.models.vision import HFVisionTower, VisionConfig


def _strategy_to_select(strategy: str) -> str:
    if strategy not in ("default", "full"):
        raise ValueError(f"unsupported vision_feature_select_strategy {strategy!r}")
    return "patch" if strategy == "default" else "cls_patch"


def select_strategy(vision: HFVisionTower) -> str:
    """The ``vision_feature_select_strategy`` that keeps the tokens mmalign's tower keeps.

    ``"default"`` drops exactly one leading token: mmalign's ``patch`` on a tower with one CLS
    token. ``"full"`` keeps all: ``cls_patch``, or ``patch`` on a tower without prefix tokens (SigLIP).

    Raises:
        ValueError: ``patch`` on a tower with several prefix tokens (registers), which llava-hf
            cannot select.
    """
    if vision.cfg.select != "patch" or vision.num_prefix_tokens == 0:
        return "full"
    if vision.num_prefix_tokens == 1:
        return "default"
    raise ValueError(
        f"llava-hf export: the tower has {vision.num_prefix_tokens} prefix tokens; llava-hf's 'default' "
        "strategy drops only one, so select='patch' cannot be exported"
    )


def llava_hf_to_lmm(hf_model: Any, tokenizer: Any | None = None, frozen_vision: bool = True) -> LMM:
    """Convert a loaded ``LlavaForConditionalGeneration`` into an :class:`LMM` (copies weights).

    Args:
        hf_model: the transformers model.
        tokenizer: if given, gains a ``<video>`` token when it lacks one.
        frozen_vision: freeze the imported vision tower.
    """
    from transformers import AutoModelForCausalLM

    config = hf_model.config
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError("llava-hf models that concatenate several vision layers are not supported")
    vcfg = VisionConfig(
        kind="hf",
        feature_layer=layer,
        select=_strategy_to_select(config.vision_feature_select_strategy),
        frozen=frozen_vision,
    )
    vision = HFVisionTower(hf_model.model.vision_tower, vcfg)
    if vcfg.select == "patch" and vision.num_prefix_tokens == 0:
        raise ValueError(
            "this llava-hf model drops the first token of a tower without a CLS token "
            "(vision_feature_select_strategy='default' on SigLIP); mmalign does not reproduce that — "
            "use vision_feature_select_strategy='full'"
        )
    projector = build_projector(
        "mlp2x_gelu",
        vision.hidden_size,
        config.text_config.hidden_size,
        bias=config.multimodal_projector_bias,
    )
    src = hf_model.model.multi_modal_projector
    projector[0].load_state_dict(src.linear_1.state_dict())
    projector[2].load_state_dict(src.linear_2.state_dict())
    if config.projector_hidden_act != "gelu":
        raise ValueError(f"projector activation {config.projector_hidden_act!r} is not supported (only gelu)")

    dtype = next(hf_model.parameters()).dtype
    text_config = config.text_config
    # Older configs declare tied embeddings only at the top level: carry the real setting over.
    text_config.tie_word_embeddings = bool(config.tie_word_embeddings or text_config.tie_word_embeddings)
    with torch.device("meta"):  # no second random init of a large LLM: weights are assigned below
        llm = AutoModelForCausalLM.from_config(text_config, dtype=dtype)
    prefix = llm.base_model_prefix
    state = {f"{prefix}.{k}": v for k, v in hf_model.model.language_model.state_dict().items()}
    state.update({f"lm_head.{k}": v for k, v in hf_model.lm_head.state_dict().items()})
    missing, unexpected = llm.load_state_dict(state, strict=False, assign=True)
    if text_config.tie_word_embeddings:
        llm.tie_weights()
    # Non-persistent buffers (rotary inv_freq) are not in the state dict: take them from the source.
    source_buffers = {f"{prefix}.{k}": v for k, v in hf_model.model.language_model.named_buffers()}
    for name, buf in list(llm.named_buffers()):
        if buf.is_meta and name in source_buffers:
            owner, _, attr = name.rpartition(".")
            llm.get_submodule(owner)._buffers[attr] = source_buffers[name].clone()
    meta = [name for name, t in [*llm.named_parameters(), *llm.named_buffers()] if t.is_meta]
    if missing or unexpected or meta:
        raise ValueError(
            f"llava-hf language model does not map: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"uninitialised {meta[:5]}"
        )
    projector.to(dtype)

    cfg = LMMConfig(vision=vcfg, projector="mlp2x_gelu", projector_bias=config.multimodal_projector_bias)
    cfg.image_token_id = int(config.image_token_index)
    if tokenizer is not None:
        image_token = tokenizer.convert_ids_to_tokens(cfg.image_token_id)
        if image_token is not None:
            cfg.image_token = image_token
        add_media_tokens(tokenizer, llm, cfg)
    return LMM(vision, projector, llm, cfg)


def _image_processor_spec(directory: Path) -> dict[str, Any] | None:
    """The image processor's settings: ``processor_config.json``'s (transformers 5) or ``preprocessor_config.json``."""
    bundled = directory / "processor_config.json"
    if bundled.exists():
        spec = json.loads(bundled.read_text()).get("image_processor")
        if isinstance(spec, dict):
            return spec
    legacy = directory / "preprocessor_config.json"
    return json.loads(legacy.read_text()) if legacy.exists() else None


def import_llava_hf(directory: str | Path, dtype: torch.dtype | None = None) -> tuple[LMM, Any]:
    """Load a local llava-hf checkpoint folder as an :class:`LMM` and its tokenizer.

    The image processor settings come from the folder's ``preprocessor_config.json``
    (:func:`~mmalign.models.llava_hf_processor.image_processor_config_from_hf`: ``do_pad`` → ``pad``,
    a plain resize without centre crop → ``resize``; llava-hf's published resize + centre crop →
    LLaVA's own ``pad``, as in LLaVA-1.5 training).
    """
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    directory = Path(directory)
    hf_model = LlavaForConditionalGeneration.from_pretrained(directory, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return finish_import(llava_hf_to_lmm(hf_model, tokenizer), directory), tokenizer


def finish_import(model: LMM, directory: Path) -> LMM:
    """The pixel processing of an imported folder (its ``preprocessor_config.json`` when present,
    else the vision tower's default) set on ``model``, in eval mode (llava-hf and Video-LLaVA)."""
    spec = _image_processor_spec(directory)
    if spec is not None:
        model.cfg.image_processor = image_processor_config_from_hf(spec)
    else:
        model.cfg.image_processor = default_image_processor(model.vision)
    return model.eval()


def lmm_to_llava_hf(model: LMM) -> Any:
    """Build a ``LlavaForConditionalGeneration`` holding a copy of ``model``'s weights.

    ``LlavaForConditionalGeneration`` has no video path, so what only videos use (the frame code
    ``video_temporal``, the temporal mixer ``video_mixer_layers``) is not exported; image
    answers are unchanged.

    Raises:
        ValueError: the LMM's parts have no llava-hf equivalent (a timm encoder, a projector
            other than ``mlp2x_gelu``, or a spatial code on the image tokens).
    """
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    if not isinstance(model.vision, HFVisionTower):
        raise ValueError("llava-hf export needs a transformers vision tower (CLIP/SigLIP), not timm")
    if projector_depth(model.cfg.projector) != 2:
        raise ValueError(f"llava-hf export needs an mlp2x_gelu projector, not {model.cfg.projector}")
    if model.cfg.image_spatial != "none":
        raise ValueError(
            f"llava-hf export: LlavaForConditionalGeneration has no image_spatial={model.cfg.image_spatial!r} "
            "code on the image tokens; the exported model would see different features"
        )
    hf_model = LlavaForConditionalGeneration(LlavaConfig(**llava_config_fields(model)))
    hf_model.to(next(model.llm.parameters()).dtype)
    hf_model.model.vision_tower.load_state_dict(model.vision.model.state_dict())
    return load_projector_and_llm(hf_model, model)


def llava_config_fields(model: LMM) -> dict[str, Any]:
    """The ``LlavaConfig`` / ``VideoLlavaConfig`` fields of ``model``'s image path, projector and LLM."""
    cfg = model.cfg
    return {
        "vision_config": model.vision.model.config.to_dict(),
        "text_config": model.llm.config.to_dict(),
        "image_token_index": cfg.image_token_id,
        "image_seq_length": model.image_tokens,
        "projector_hidden_act": "gelu",
        "vision_feature_select_strategy": select_strategy(model.vision),
        "vision_feature_layer": cfg.vision.feature_layer,
        "multimodal_projector_bias": cfg.projector_bias,
        "tie_word_embeddings": bool(model.llm.config.tie_word_embeddings),
    }


def load_projector_and_llm(hf_model: Any, model: LMM) -> Any:
    """Copy ``model``'s two-layer projector, LLM trunk and LM head into a llava-hf or Video-LLaVA
    model (their ``multi_modal_projector``, ``language_model``, ``lm_head``); returns it in eval mode."""
    hf_model.model.multi_modal_projector.linear_1.load_state_dict(model.projector[0].state_dict())
    hf_model.model.multi_modal_projector.linear_2.load_state_dict(model.projector[2].state_dict())
    base = getattr(model.llm, model.llm.base_model_prefix)
    hf_model.model.language_model.load_state_dict(base.state_dict())
    hf_model.lm_head.load_state_dict(model.llm.get_output_embeddings().state_dict())
    return hf_model.eval()


def export_llava_hf(model: LMM, tokenizer: Any, directory: str | Path) -> Path:
    """Write ``model`` as a llava-hf folder that ``AutoProcessor`` + ``LlavaForConditionalGeneration`` load.

    Writes the weights and config, a ``generation_config.json`` that stops where mmalign stops
    (EOS and the template's end-of-turn tokens), the tokenizer, and a ``LlavaProcessor``
    (``processor_config.json``, ``chat_template.jinja``; also ``preprocessor_config.json`` as older
    transformers read it) built by
    :func:`~mmalign.models.llava_hf_processor.build_llava_processor` to reproduce mmalign's pixels,
    prompt and image-token count. Whatever cannot be reproduced is logged as a warning and listed in
    the folder's ``README.md``.

    Args:
        model: an LMM with an HF vision tower and an ``mlp2x_gelu`` projector.
        tokenizer: its tokenizer (not modified).
        directory: the output folder.

    Returns:
        ``directory``.
    """
    directory = Path(directory)
    hf_model = lmm_to_llava_hf(model)
    processor, notes = build_llava_processor(model, tokenizer, hf_model.config.vision_feature_select_strategy)
    stops = stop_token_ids(tokenizer)
    if stops:
        hf_model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is not None:
        hf_model.generation_config.pad_token_id = int(pad)
    hf_model.save_pretrained(directory)
    processor.save_pretrained(directory)  # the tokenizer too, with the exported chat template
    processor.image_processor.save_pretrained(directory)  # preprocessor_config.json, for transformers 4
    scale = float(processor.image_processor.rescale_factor) * 255.0
    write_readme(directory, model.cfg.image_processor, scale, notes)
    return directory
