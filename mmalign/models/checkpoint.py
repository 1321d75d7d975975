"""Self-describing LMM checkpoint directories, and building an LMM from local component checkpoints.

Layout of a checkpoint directory::

    mmalign.json          LMMConfig (+ format/version): how to rebuild the model and its inputs
    vision/               the image encoder (transformers ``save_pretrained``, or timm weights + config)
    video_vision/         a separate video-frame encoder (only if ``video_vision`` is set: Video-LLaVA)
    projector.safetensors the projector's weights
    temporal.safetensors  the video temporal mixer's weights (only if ``video_mixer_layers`` > 0)
    llm/                  the causal LM (transformers ``save_pretrained``)
    tokenizer/            the tokenizer (with the image/video tokens and chat template)

Each part is an ordinary checkpoint of its library, so :func:`load_lmm` goes through the same
``from_pretrained`` code as a model assembled from downloaded CLIP / Vicuna folders
(:func:`build_lmm`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mmalign.models.lmm import LMM, LMMConfig
from mmalign.models.projector import build_projector
from mmalign.models.vision import load_vision_encoder

FORMAT = "mmalign-lmm"
VERSION = 1


def save_lmm(model: LMM, tokenizer: Any, directory: str | Path) -> Path:
    """Write ``model`` and ``tokenizer`` as a checkpoint directory (atomically: temp dir + rename).

    An existing directory at ``directory`` is replaced only after the new one is complete.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700
    try:
        spec = {"format": FORMAT, "version": VERSION, **model.cfg.to_dict()}
        (tmp / "mmalign.json").write_text(json.dumps(spec, indent=2))
        model.vision.save(tmp / "vision")
        if model.video_vision is not None:
            model.video_vision.save(tmp / "video_vision")
        save_file(_cpu_state(model.projector), str(tmp / "projector.safetensors"))
        if model.temporal is not None:
            save_file(_cpu_state(model.temporal), str(tmp / "temporal.safetensors"))
        model.llm.save_pretrained(tmp / "llm")
        tokenizer.save_pretrained(tmp / "tokenizer")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not directory.exists():
        tmp.rename(directory)
        return directory
    old = directory.with_name(f".{directory.name}.old")
    if old.exists():
        shutil.rmtree(old)
    directory.rename(old)
    try:
        tmp.rename(directory)
    except BaseException:
        old.rename(directory)  # put the previous checkpoint back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old)
    return directory


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def read_config(directory: str | Path) -> LMMConfig:
    """Read and validate ``mmalign.json`` of a checkpoint directory."""
    path = Path(directory) / "mmalign.json"
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not an mmalign checkpoint (no mmalign.json)")
    spec = json.loads(path.read_text())
    if spec.pop("format", None) != FORMAT:
        raise ValueError(f"{path}: not an {FORMAT} config")
    version = spec.pop("version", None)
    if version != VERSION:
        raise ValueError(f"{path}: checkpoint format version {version}, this mmalign reads {VERSION}")
    return LMMConfig(**spec)


def load_lmm(directory: str | Path, dtype: torch.dtype | None = None) -> tuple[LMM, Any]:
    """Load a checkpoint directory written by :func:`save_lmm`.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = Path(directory)
    cfg = read_config(directory)
    vision = load_vision_encoder(directory / "vision", cfg.vision, dtype=dtype)
    video_vision = None
    if cfg.video_vision is not None:
        video_vision = load_vision_encoder(directory / "video_vision", cfg.video_vision, dtype=dtype)
    llm = AutoModelForCausalLM.from_pretrained(directory / "llm", dtype=dtype)
    projector = build_projector(cfg.projector, vision.hidden_size, llm.config.hidden_size, cfg.projector_bias)
    projector.load_state_dict(load_file(str(directory / "projector.safetensors")))
    projector.to(dtype or next(llm.parameters()).dtype)
    tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
    model = LMM(vision, projector, llm, cfg, video_vision=video_vision)
    if model.temporal is not None:
        model.temporal.load_state_dict(load_file(str(directory / "temporal.safetensors")))
    model.eval()
    return model, tokenizer


def add_media_tokens(tokenizer: Any, llm: torch.nn.Module, cfg: LMMConfig) -> None:
    """Make sure the tokenizer has the image/video tokens; grow the LLM's embeddings if it had to add them.

    Sets ``cfg.image_token_id`` and ``cfg.video_token_id``.
    """
    missing = [t for t in (cfg.image_token, cfg.video_token) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": missing}, replace_extra_special_tokens=False
        )
    if len(tokenizer) > llm.get_input_embeddings().weight.shape[0]:
        llm.resize_token_embeddings(len(tokenizer))
    cfg.image_token_id = int(tokenizer.convert_tokens_to_ids(cfg.image_token))
    cfg.video_token_id = int(tokenizer.convert_tokens_to_ids(cfg.video_token))


def default_image_processor(vision: Any, mode: str = "pad") -> Any:
    """Pixel settings when a checkpoint ships none: the tower's own size; SigLIP's 0.5 mean/std."""
    from mmalign.data.media import CLIP_MEAN, CLIP_STD, ImageProcessorConfig

    hf_config = getattr(getattr(vision, "model", None), "config", None)
    siglip = str(getattr(hf_config, "model_type", "")).startswith("siglip")
    mean, std = ((0.5,) * 3, (0.5,) * 3) if siglip else (CLIP_MEAN, CLIP_STD)
    return ImageProcessorConfig(size=int(vision.image_size), mode=mode, mean=mean, std=std)


def build_lmm(
    vision_path: str | Path,
    llm_path: str | Path,
    cfg: LMMConfig | None = None,
    tokenizer_path: str | Path | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[LMM, Any]:
    """Assemble an LMM from local component checkpoints (e.g. a CLIP folder and a Vicuna folder).

    The projector is freshly initialised (LLaVA stage 1 trains it). The image processor is read
    from the vision folder's ``preprocessor_config.json`` when present.

    Args:
        vision_path: a transformers vision (or full CLIP/SigLIP) checkpoint, or timm weights.
        llm_path: a transformers causal-LM checkpoint.
        cfg: model options (defaults: LLaVA-1.5 — penultimate layer, no CLS, mlp2x_gelu, pad).
        tokenizer_path: defaults to ``llm_path``.
        dtype: load weights in this dtype.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mmalign.data.media import ImageProcessorConfig

    cfg = cfg or LMMConfig()
    vision = load_vision_encoder(vision_path, cfg.vision, dtype=dtype)
    if (Path(vision_path) / "preprocessor_config.json").exists():
        cfg.image_processor = ImageProcessorConfig.from_hf(vision_path, mode=cfg.image_processor.mode)
    else:
        cfg.image_processor = default_image_processor(vision, cfg.image_processor.mode)
    llm = AutoModelForCausalLM.from_pretrained(llm_path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or llm_path)
    add_media_tokens(tokenizer, llm, cfg)
    projector = build_projector(cfg.projector, vision.hidden_size, llm.config.hidden_size, cfg.projector_bias)
    projector.to(dtype or next(llm.parameters()).dtype)
    return LMM(vision, projector, llm, cfg), tokenizer


def load_model(
    path: str | Path, dtype: torch.dtype | None = None, template: str | None = None
) -> tuple[LMM, Any]:
    """Load an mmalign checkpoint directory, a llava-hf or a Video-LLaVA folder, whichever ``path`` is.

    Args:
        path: the checkpoint.
        dtype: every floating-point weight in this dtype (trainers pass the run's precision, so
            that a bf16 checkpoint trained in fp32 really trains — and is saved — in fp32);
            ``None`` keeps the checkpoint's own.
        template: chat template override (a built-in name, a Jinja file or Jinja source), stored
            in ``model.cfg.template`` so that processors and exports use it.

    Raises:
        FileNotFoundError: ``path`` is none of these kinds of checkpoint.
        ValueError: an unknown ``template``, or weights that did not load in ``dtype``.
    """
    from mmalign.data.templates import template_setting

    path = Path(path)
    if (path / "mmalign.json").exists():
        model, tokenizer = load_lmm(path, dtype=dtype)
    else:
        config = path / "config.json"
        model_type = json.loads(config.read_text()).get("model_type") if config.exists() else None
        if model_type == "llava":
            from mmalign.models.llava_hf import import_llava_hf

            model, tokenizer = import_llava_hf(path, dtype=dtype)
        elif model_type == "video_llava":
            from mmalign.models.video_llava import import_video_llava

            model, tokenizer = import_video_llava(path, dtype=dtype)
        else:
            raise FileNotFoundError(
                f"{path} is neither an mmalign checkpoint (mmalign.json) nor a llava-hf or "
                "Video-LLaVA folder (config.json with model_type 'llava' / 'video_llava')"
            )
    if dtype is not None:
        other = sorted(
            {str(p.dtype) for p in model.parameters() if p.is_floating_point() and p.dtype != dtype}
        )
        if other:
            raise ValueError(f"{path}: asked for {dtype} weights, some loaded as {', '.join(other)}")
    if template is not None:
        model.cfg.template = template_setting(template)
    return model, tokenizer
