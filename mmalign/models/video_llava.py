"""Import and export Video-LLaVA checkpoints (transformers' ``VideoLlavaForConditionalGeneration``).

Video-LLaVA (Lin et al., 2023, https://arxiv.org/abs/2311.10122) aligns images and videos to one
LLM through two encoders of the same shape (LanguageBind's image and video towers, CLIP-L/14) and
one shared projector. transformers' ``modeling_video_llava`` computes:

* images: ``image_tower`` → ``hidden_states[vision_feature_layer]``; ``"default"`` drops the CLS
  token, ``"full"`` keeps it → projector → written into the ``<image>`` slots;
* videos ``(B, T, 3, H, W)``: the ``T`` frames through ``video_tower`` → the same layer, **all**
  tokens (the CLS of each frame is kept whatever the strategy) → projector → ``T · (1 + N)``
  tokens, frame-major, written into the ``<video>`` slots (``video_seq_length`` = 8 · 257 = 2056
  for the published 224 px, patch 14 towers).

Mapping (Video-LLaVA → mmalign): ``image_tower`` → ``LMM.vision`` (``select`` ``"patch"`` /
``"cls_patch"`` as for llava-hf); ``video_tower`` → ``LMM.video_vision`` with ``select="cls_patch"``
(:class:`~mmalign.models.lmm.LMM` runs frames through it when set); ``multi_modal_projector`` → the
``mlp2x_gelu`` projector shared by both; ``language_model`` + ``lm_head`` → an
``AutoModelForCausalLM``; ``image_token_index`` / ``video_token_index`` → ``image_token_id`` /
``video_token_id``; ``video_seq_length / (1 + N)`` → ``video_frames``. The projector and LLM
mapping is :func:`~mmalign.models.llava_hf.llava_hf_to_lmm`'s, run on a llava-shaped view.

Pixels: mmalign processes frames as images (``LMMConfig.image_processor``: pad or resize to a
square); Video-LLaVA's video processor resizes the shortest edge and centre-crops. They agree on
square frames (ShapeWorld); on other aspect ratios the frames differ (see the export's README).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from mmalign.data.processor import stop_token_ids
from mmalign.models.checkpoint import add_media_tokens
from mmalign.models.llava_hf import (
    finish_import,
    llava_config_fields,
    llava_hf_to_lmm,
    load_projector_and_llm,
)  # fmt: skip
from mmalign.models.llava_hf_processor import build_llava_processor
from mmalign.models.lmm import LMM
from mmalign.models.projector import projector_depth
from mmalign.models.vision import HFVisionTower, VisionConfig

MODEL_TYPE = "video_llava"
DEFAULT_FRAMES = 8  # Video-LLaVA samples 8 frames uniformly per clip
_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


class _AsLlava:
    """The attributes of a ``LlavaForConditionalGeneration`` that :func:`llava_hf_to_lmm` reads,
    taken from a ``VideoLlavaForConditionalGeneration`` (its image tower as ``vision_tower``)."""

    def __init__(self, hf_model: Any) -> None:
        inner = hf_model.model
        self.config = hf_model.config
        self.model = SimpleNamespace(
            vision_tower=inner.image_tower,
            multi_modal_projector=inner.multi_modal_projector,
            language_model=inner.language_model,
        )
        self.lm_head = hf_model.lm_head
        self.parameters = hf_model.parameters


def video_llava_to_lmm(hf_model: Any, tokenizer: Any | None = None, frozen_vision: bool = True) -> LMM:
    """Convert a loaded ``VideoLlavaForConditionalGeneration`` into an :class:`LMM` with a video tower.

    The LMM then gives transformers' logits: images ``(Ni, 3, H, W)`` take ``N`` (or ``1 + N``)
    tokens each, videos ``(Nv, T, 3, H, W)`` take ``T · (1 + N)`` tokens each (source:
    transformers' ``modeling_video_llava.VideoLlavaModel.get_image_features`` /
    ``get_video_features``).

    Args:
        hf_model: the transformers model (its towers and weights are taken over, not copied).
        tokenizer: if given, the image/video tokens are read from it at the config's ids (and added
            if it lacks them).
        frozen_vision: freeze both imported towers.

    Raises:
        ValueError: several feature layers, a projector activation other than gelu, a
            ``"default"`` strategy on a tower without CLS, or a tokenizer whose media token ids
            differ from the config's.
    """
    config = hf_model.config
    model = llava_hf_to_lmm(_AsLlava(hf_model), tokenizer=None, frozen_vision=frozen_vision)
    video_cfg = VisionConfig(
        kind="hf", feature_layer=int(config.vision_feature_layer), select="cls_patch", frozen=frozen_vision
    )
    video = HFVisionTower(hf_model.model.video_tower, video_cfg)
    cfg = model.cfg
    cfg.video_vision = video_cfg
    cfg.video_token_id = int(config.video_token_index)
    per_frame = video.num_tokens
    seq = int(getattr(config, "video_seq_length", 0) or 0)
    cfg.video_frames = seq // per_frame if seq and seq % per_frame == 0 else DEFAULT_FRAMES
    if tokenizer is not None:
        ids = {"image": cfg.image_token_id, "video": cfg.video_token_id}
        for kind, token_id in ids.items():
            token = tokenizer.convert_ids_to_tokens(token_id) if token_id < len(tokenizer) else None
            if token is not None:
                setattr(cfg, f"{kind}_token", token)
        add_media_tokens(tokenizer, model.llm, cfg)
        if (cfg.image_token_id, cfg.video_token_id) != (ids["image"], ids["video"]):
            raise ValueError(
                f"Video-LLaVA config has image/video token ids {ids['image']}/{ids['video']}, the tokenizer "
                f"{cfg.image_token}/{cfg.video_token} are {cfg.image_token_id}/{cfg.video_token_id}"
            )
    return LMM(model.vision, model.projector, model.llm, cfg, video_vision=video)


def check_video_llava_folder(directory: str | Path) -> Path:
    """Check that ``directory`` holds a Video-LLaVA checkpoint: config, weights and tokenizer.

    Raises:
        FileNotFoundError: no such folder, no ``config.json``, no weights or no tokenizer files
            (the message names the path and what is missing).
        ValueError: ``config.json`` is not a ``video_llava`` model.
    """
    import json

    directory = Path(directory)
    config = directory / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{directory}: not a Video-LLaVA folder (no config.json)")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type != MODEL_TYPE:
        raise ValueError(
            f"{config}: model_type is {model_type!r}, not a Video-LLaVA checkpoint ({MODEL_TYPE!r})"
        )
    for what, names in (("weights", _WEIGHTS), ("tokenizer", _TOKENIZER)):
        if not any((directory / name).is_file() for name in names):
            raise FileNotFoundError(
                f"{directory}: Video-LLaVA folder without {what} (none of {', '.join(names)})"
            )
    return directory


def import_video_llava(directory: str | Path, dtype: torch.dtype | None = None) -> tuple[LMM, Any]:
    """Load a local Video-LLaVA folder (e.g. ``LanguageBind/Video-LLaVA-7B-hf``) as an LMM and tokenizer.

    Pixel settings come from the folder's image processor (``processor_config.json`` or
    ``preprocessor_config.json``, as :func:`~mmalign.models.llava_hf.import_llava_hf`); without one,
    the tower's size and CLIP's mean/std. Frames are processed with the same settings.

    Args:
        directory: the folder (``config.json`` with ``model_type`` ``video_llava``, weights, tokenizer).
        dtype: load weights in this dtype (``None``: the checkpoint's).

    Returns:
        ``(model, tokenizer)``; the model is in eval mode.

    Raises:
        FileNotFoundError / ValueError: see :func:`check_video_llava_folder` and
            :func:`video_llava_to_lmm`.
    """
    from transformers import AutoTokenizer, VideoLlavaForConditionalGeneration

    directory = check_video_llava_folder(directory)
    hf_model = VideoLlavaForConditionalGeneration.from_pretrained(directory, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return finish_import(video_llava_to_lmm(hf_model, tokenizer), directory), tokenizer


def _same_tower_config(a: Any, b: Any) -> bool:
    skip = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures"}
    da, db = a.to_dict(), b.to_dict()
    return {k: v for k, v in da.items() if k not in skip} == {k: v for k, v in db.items() if k not in skip}


def lmm_to_video_llava(model: LMM) -> Any:
    """Build a ``VideoLlavaForConditionalGeneration`` holding a copy of ``model``'s weights.

    The image tower is ``model.vision``; the video tower ``model.video_vision`` (or, for an LMM
    without one, a copy of ``model.vision``, which must then keep every token of a frame).

    Raises:
        ValueError: no video token id, a timm encoder, a projector other than ``mlp2x_gelu``, a
            spatial/temporal code, temporal mixer or pooling (Video-LLaVA has none), towers of
            different shapes or layers, or a video tower that drops the CLS token.
    """
    from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration

    cfg = model.cfg
    video = model.video_vision if model.video_vision is not None else model.vision
    if not (isinstance(model.vision, HFVisionTower) and isinstance(video, HFVisionTower)):
        raise ValueError("Video-LLaVA export needs transformers vision towers (CLIP/SigLIP), not timm")
    if cfg.video_token_id < 0:
        raise ValueError("Video-LLaVA export needs a video token (LMMConfig.video_token_id is unset)")
    if projector_depth(cfg.projector) != 2:
        raise ValueError(f"Video-LLaVA export needs an mlp2x_gelu projector, not {cfg.projector}")
    extras = {
        "image_spatial": cfg.image_spatial != "none",
        "video_temporal": cfg.video_temporal != "none",
        "video_mixer_layers": model.temporal is not None,
        "video_pool": cfg.video_pool != 1,
    }
    if any(extras.values()):
        names = ", ".join(k for k, v in extras.items() if v)
        raise ValueError(
            f"Video-LLaVA export: VideoLlavaForConditionalGeneration has no equivalent of {names}"
        )
    if video.cfg.select != "cls_patch" and video.num_prefix_tokens:
        raise ValueError(
            "Video-LLaVA export: Video-LLaVA keeps every token of a frame; this video tower drops the CLS"
        )
    if video.cfg.feature_layer != cfg.vision.feature_layer:
        raise ValueError(
            f"Video-LLaVA export: one vision_feature_layer for both towers, got image "
            f"{cfg.vision.feature_layer} and video {video.cfg.feature_layer}"
        )
    if not _same_tower_config(model.vision.model.config, video.model.config):
        raise ValueError(
            "Video-LLaVA export: one vision_config for both towers, the image and video towers differ"
        )
    config = VideoLlavaConfig(
        **llava_config_fields(model),
        video_token_index=cfg.video_token_id,
        video_seq_length=model.video_tokens,
    )
    hf_model = VideoLlavaForConditionalGeneration(config)
    hf_model.to(next(model.llm.parameters()).dtype)
    hf_model.model.image_tower.load_state_dict(model.vision.model.state_dict())
    hf_model.model.video_tower.load_state_dict(video.model.state_dict())
    return load_projector_and_llm(hf_model, model)


def build_video_llava_processor(model: LMM, tokenizer: Any, strategy: str) -> tuple[Any, list[str]]:
    """A ``VideoLlavaProcessor`` reproducing ``model``'s inputs: mmalign's image processor (a
    ``LlavaImageProcessor``, which can pad), a video processor resizing frames to the same square,
    the chat template, and ``<image>`` / ``<video>`` expanded to ``N`` / ``T · (1 + N)`` tokens.

    Returns:
        ``(processor, notes)``: what still differs from mmalign's processing.

    Raises:
        ValueError: the processor would expand ``<video>`` to another number of tokens.
    """
    from transformers import VideoLlavaProcessor, VideoLlavaVideoProcessor

    llava, notes = build_llava_processor(model, tokenizer, strategy)  # checks the image-token count
    ip = llava.image_processor
    video = model._video.image_encoder
    side = {"height": model.cfg.image_processor.size, "width": model.cfg.image_processor.size}
    video_processor = VideoLlavaVideoProcessor(
        size=side,
        do_center_crop=False,
        crop_size=side,
        resample=ip.resample,
        rescale_factor=ip.rescale_factor,
        image_mean=ip.image_mean,
        image_std=ip.image_std,
    )
    if model.cfg.image_processor.mode == "pad":
        notes.append(
            "video frames: mmalign pads each frame to a square, the video processor resizes it to one; "
            "they agree on square frames"
        )
    extra = int(video.num_prefix_tokens)
    n = model.cfg.video_frames * ((model.cfg.image_processor.size // video.patch_size) ** 2 + extra)
    if n != model.video_tokens:
        raise ValueError(
            f"Video-LLaVA export: the processor would expand {model.cfg.video_token} into {n} tokens, "
            f"the model reads {model.video_tokens}"
        )
    processor = VideoLlavaProcessor(
        image_processor=ip,
        video_processor=video_processor,
        tokenizer=tokenizer,
        patch_size=int(model.vision.patch_size),
        vision_feature_select_strategy=strategy,
        image_token=model.cfg.image_token,
        video_token=model.cfg.video_token,
        chat_template=llava.chat_template,
        num_additional_image_tokens=int(model.vision.num_prefix_tokens),
    )
    return processor, notes


def export_video_llava(model: LMM, tokenizer: Any, directory: str | Path) -> Path:
    """Write ``model`` as a Video-LLaVA folder that ``AutoProcessor`` + ``VideoLlavaForConditionalGeneration`` load.

    Writes the weights and config (:func:`lmm_to_video_llava`), a ``generation_config.json``
    stopping where mmalign stops, the tokenizer and a ``VideoLlavaProcessor``
    (:func:`build_video_llava_processor`; also ``preprocessor_config.json``), and a ``README.md``
    listing what the processor does differently.

    Args:
        model: an LMM with HF towers and an ``mlp2x_gelu`` projector (see :func:`lmm_to_video_llava`).
        tokenizer: its tokenizer (not modified).
        directory: the output folder.

    Returns:
        ``directory``.

    Raises:
        ValueError: see :func:`lmm_to_video_llava` and :func:`build_video_llava_processor`.
    """
    directory = Path(directory)
    hf_model = lmm_to_video_llava(model)
    processor, notes = build_video_llava_processor(
        model, tokenizer, hf_model.config.vision_feature_select_strategy
    )
    stops = stop_token_ids(tokenizer)
    if stops:
        hf_model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is not None:
        hf_model.generation_config.pad_token_id = int(pad)
    hf_model.save_pretrained(directory)
    processor.save_pretrained(directory)
    processor.image_processor.save_pretrained(directory)  # preprocessor_config.json, for transformers 4
    _write_readme(directory, model, notes)
    return directory


def _write_readme(directory: Path, model: LMM, notes: list[str]) -> None:
    """A model card: how to load the folder, and how its processing differs from mmalign's."""
    cfg = model.cfg.image_processor
    differences = "".join(f"- {n}\n" for n in notes)
    text = f"""# Video-LLaVA export of an mmalign model

```python
from transformers import AutoProcessor, VideoLlavaForConditionalGeneration

processor = AutoProcessor.from_pretrained(path, backend="pil")  # "pil": pixels as mmalign's
model = VideoLlavaForConditionalGeneration.from_pretrained(path)
conversation = [{{"role": "user", "content": [{{"type": "video"}}, {{"type": "text", "text": "What happens?"}}]}}]
prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
inputs = processor(videos=[frames], text=prompt, return_tensors="pt")  # frames: {model.cfg.video_frames} RGB arrays
answer = model.generate(**inputs, max_new_tokens=64, do_sample=False)
```

mmalign's pixel processing (images and each video frame): `{cfg.mode}` mode, {cfg.size}×{cfg.size},
{cfg.resample}, mean {list(cfg.mean)}, std {list(cfg.std)}. A video takes {model.video_tokens} tokens
({model.cfg.video_frames} frames, CLS kept), an image {model.image_tokens}.

Known differences from mmalign's processing:
{differences}- transformers' default torchvision backend resizes with its own bicubic kernel; load with
  `backend="pil"` for pixels closer to mmalign's.
- mmalign samples {model.cfg.video_frames} frames uniformly over a clip; sample the same frames yourself.
"""
    (directory / "README.md").write_text(text)
