"""The processor half of a llava-hf export: pixels, chat template and image-token count.

A llava-hf folder is used as ``AutoProcessor.from_pretrained(dir)`` + ``LlavaForConditionalGeneration``.
For it to give mmalign's answer, the ``LlavaProcessor`` written here must reproduce
:func:`mmalign.data.media.process_image` and mmalign's prompt rendering:

* **Pixels** — ``LlavaImageProcessor`` with ``do_pad`` (LLaVA-1.5's ``expand2square``: pad the short
  side with the mean colour, centred) for ``pad`` mode, without it for ``resize``; then a resize
  to ``size × size`` with mmalign's filter, no centre crop, rescale and normalise.

  - transformers fills the padding with ``int(mean · 255)`` (truncated, as LLaVA's code), mmalign
    with the colour :func:`pad_fill` reads back from ``process_image`` (rounded today). When the
    two differ, the export scales ``image_mean``, ``image_std`` and ``rescale_factor`` by one factor
    ``k``: ``(x · k/255 − k·mean) / (k·std)`` is the same normalisation, and ``int(k · mean · 255)``
    is mmalign's colour. When no single ``k`` fits every channel the plain mean is written and the
    difference is logged and recorded in the folder's README.
  - transformers' *default* backend (torchvision) resizes with its own bicubic kernel, which
    differs from Pillow's by about one grey level on a few percent of the pixels (more when
    upscaling). ``AutoProcessor.from_pretrained(dir, backend="pil")`` resizes with Pillow, as
    mmalign does, and gives identical pixels. This cannot be set in the saved config.
* **Chat template** — the template mmalign renders with (:func:`mmalign.data.templates.load_template`:
  the model's ``template``, else the tokenizer's, else ``vicuna_v1``). A template that already reads
  typed content parts is written unchanged; otherwise :data:`TYPED_CONTENT_PRELUDE` is put in front
  of it, so that messages in llava-hf's typed style (``[{"type": "image"}, {"type": "text", ...}]``)
  are flattened to mmalign's string form (each image part becomes ``<image>\\n``, images first as
  llava-hf's own templates do, then the text parts joined by a space) while string content
  passes through unchanged. The folder's one ``chat_template.jinja`` serves both the processor and
  the tokenizer that mmalign re-imports.
* **Image tokens** — ``patch_size``, ``vision_feature_select_strategy`` and
  ``num_additional_image_tokens`` (the tower's CLS tokens) make the processor expand ``<image>`` to
  :attr:`LMM.image_tokens` copies.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mmalign.data.media import CLIP_MEAN, CLIP_STD, ImageProcessorConfig, process_image
from mmalign.data.templates import load_template

logger = logging.getLogger(__name__)

PIL_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}

TYPED_CONTENT_PRELUDE = (
    "{% set mm = namespace(messages=[]) %}"
    "{% for m in messages %}"
    "{% if m['content'] is string %}{% set mm.messages = mm.messages + [m] %}"
    "{% else %}{% set part = namespace(images='', texts=[]) %}"
    "{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}{% set part.images = part.images + IMAGE_TOKEN_LITERAL %}"
    "{% elif p['type'] == 'text' %}{% set part.texts = part.texts + [p['text']] %}"
    "{% else %}{{ raise_exception('this model reads text and image content parts, not ' + p['type']) }}"
    "{% endif %}{% endfor %}"
    "{% set mm.messages = mm.messages + [{'role': m['role'], 'content': part.images + part.texts | join(' ')}] %}"
    "{% endif %}{% endfor %}"
    "{% set messages = mm.messages %}"
)
"""Jinja put in front of a string-content template: typed parts → mmalign's string form."""


# ----------------------------------------------------------------------------------------- pixels
def pad_fill(cfg: ImageProcessorConfig) -> tuple[int, int, int]:
    """The RGB colour mmalign pads with, read back from :func:`process_image` itself.

    A black 4×2 image is padded to 4×4 without resizing; its first row is padding.
    """
    probe = process_image(Image.new("RGB", (4, 2)), replace(cfg, size=4, mode="pad"))
    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    rgb = ((probe * std + mean) * 255.0)[:, 0, 0].double()
    return tuple(int(round(v)) for v in rgb.tolist())  # type: ignore[return-value]


def _truncated_fill(mean: list[float]) -> tuple[int, ...]:
    """transformers' padding colour for ``image_mean`` (``LlavaImageProcessor._preprocess``)."""
    return tuple(int(x * 255) for x in mean)


def fill_scale(mean: tuple[float, ...], fill: tuple[int, ...]) -> float | None:
    """A factor ``k`` with ``int(k · mean_c · 255) == fill_c`` for every channel, or None.

    ``k = 1`` when it works; else the middle of the interval allowed by all channels, checked
    with the same float arithmetic transformers uses (after a JSON round trip).
    """
    if _truncated_fill(list(mean)) == tuple(fill):
        return 1.0
    lo, hi = 0.0, math.inf
    for m, f in zip(mean, fill, strict=True):
        if m <= 0:
            if f != 0:
                return None
            continue
        lo, hi = max(lo, f / (255.0 * m)), min(hi, (f + 1) / (255.0 * m))
    if not lo < hi or math.isinf(hi):
        return None
    k = (lo + hi) / 2
    scaled = json.loads(json.dumps([k * m for m in mean]))
    return k if _truncated_fill(scaled) == tuple(fill) else None


def image_processor_kwargs(cfg: ImageProcessorConfig) -> tuple[dict[str, Any], list[str]]:
    """``LlavaImageProcessor`` settings that reproduce ``cfg``, and the differences that remain.

    Returns:
        ``(kwargs, notes)``: ``notes`` name every way the written processor still differs from
        :func:`process_image` (each also logged as a warning by :func:`build_llava_processor`).
    """
    side = {"height": cfg.size, "width": cfg.size}
    mean, std, rescale = list(cfg.mean), list(cfg.std), 1.0 / 255.0
    notes: list[str] = []
    if cfg.mode == "pad":
        fill = pad_fill(cfg)
        k = fill_scale(cfg.mean, fill)
        if k is None:
            notes.append(
                f"pad colour: mmalign pads with RGB {fill}, transformers with int(mean·255) = "
                f"{_truncated_fill(mean)}; no rescaling of mean/std reproduces it, so pixels on and near "
                "the padded border of a non-square image differ by one or two grey levels"
            )
        elif k != 1.0:
            mean, std, rescale = [k * m for m in mean], [k * s for s in std], k / 255.0
    kwargs = {
        "do_resize": True,
        "size": side,
        "resample": PIL_RESAMPLE[cfg.resample],
        "do_center_crop": False,
        "crop_size": side,
        "do_pad": cfg.mode == "pad",
        "do_rescale": True,
        "rescale_factor": rescale,
        "do_normalize": True,
        "image_mean": mean,
        "image_std": std,
        "do_convert_rgb": True,
    }
    return kwargs, notes


def image_processor_config_from_hf(spec: dict[str, Any]) -> ImageProcessorConfig:
    """mmalign's pixel settings from a transformers ``preprocessor_config.json`` dict.

    ``do_pad`` → ``pad``; no padding and no centre crop → ``resize``; anything else (llava-hf's
    published shortest-edge resize + centre crop) → ``pad``, as LLaVA-1.5 was trained. A
    ``rescale_factor`` other than 1/255 is folded into mean and std (the exact inverse of
    :func:`image_processor_kwargs`'s scaling).
    """
    size = spec.get("crop_size") or spec.get("size") or {}
    side = (
        size.get("height") or size.get("shortest_edge") or size.get("width")
        if isinstance(size, dict)
        else size
    )
    if not side:
        raise ValueError("preprocessor_config.json: cannot find the image size (crop_size/size)")
    if spec.get("do_pad"):
        mode = "pad"
    elif spec.get("do_center_crop") is False:
        mode = "resize"
    else:
        mode = "pad"
    k = float(spec.get("rescale_factor", 1 / 255)) * 255.0
    mean = spec.get("image_mean", CLIP_MEAN)
    std = spec.get("image_std", CLIP_STD)
    names = {value: name for name, value in PIL_RESAMPLE.items()}
    return ImageProcessorConfig(
        size=int(side),
        mode=mode,
        mean=tuple(m / k for m in mean),
        std=tuple(s / k for s in std),
        resample=names.get(spec.get("resample", 3), "bicubic"),  # type: ignore[arg-type]
    )


# ----------------------------------------------------------------------------------- template
def typed_content_template(tokenizer: Any, template: str | None, image_token: str = "<image>") -> str:
    """The chat template to export: mmalign's, readable with llava-hf's typed content parts.

    Args:
        tokenizer: the model's tokenizer.
        template: the model's ``LMMConfig.template`` (None = the tokenizer's own, else vicuna_v1).
        image_token: what an image part renders as (followed by a newline).
    """
    resolved = load_template(tokenizer, template)
    if resolved.typed:
        return resolved.source
    literal = json.dumps(image_token + "\n")
    return TYPED_CONTENT_PRELUDE.replace("IMAGE_TOKEN_LITERAL", literal) + resolved.source


# ---------------------------------------------------------------------------------- processor
def processor_image_tokens(strategy: str, patch_size: int, size: int, additional: int) -> int:
    """What ``LlavaProcessor.replace_image_token`` expands one ``<image>`` into."""
    n = (size // patch_size) ** 2 + additional
    return n - 1 if strategy == "default" else n


def build_llava_processor(model: Any, tokenizer: Any, strategy: str) -> tuple[Any, list[str]]:
    """A ``LlavaProcessor`` reproducing ``model``'s input processing.

    Args:
        model: the :class:`~mmalign.models.lmm.LMM` being exported (an HF vision tower).
        tokenizer: its tokenizer (not modified).
        strategy: the exported ``vision_feature_select_strategy``.

    Returns:
        ``(processor, notes)``: notes as in :func:`image_processor_kwargs`, each logged as a warning.

    Raises:
        ValueError: the processor would expand ``<image>`` to a different number of tokens.
    """
    from transformers import LlavaImageProcessor, LlavaProcessor

    cfg = model.cfg
    kwargs, notes = image_processor_kwargs(cfg.image_processor)
    image_processor = LlavaImageProcessor(**kwargs)  # the backend is chosen at load time
    additional = int(model.vision.num_prefix_tokens)
    n = processor_image_tokens(strategy, model.vision.patch_size, cfg.image_processor.size, additional)
    if n != model.image_tokens:
        raise ValueError(
            f"llava-hf export: the processor would expand {cfg.image_token} into {n} tokens "
            f"(patch {model.vision.patch_size}, size {cfg.image_processor.size}, strategy {strategy!r}), "
            f"the model reads {model.image_tokens}"
        )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=int(model.vision.patch_size),
        vision_feature_select_strategy=strategy,
        chat_template=typed_content_template(tokenizer, cfg.template, cfg.image_token),
        image_token=cfg.image_token,
        num_additional_image_tokens=additional,
    )
    for note in notes:
        logger.warning("llava-hf export: %s", note)
    return processor, notes


def write_readme(directory: Path, cfg: ImageProcessorConfig, scale: float, notes: list[str]) -> None:
    """A model card saying how to load the folder and how its processing relates to mmalign's.

    Args:
        scale: the factor ``k`` applied to ``image_mean``/``image_std``/``rescale_factor`` (1 = none).
    """
    differences = "".join(f"- {n}\n" for n in notes)
    if abs(scale - 1.0) > 1e-12:
        scaled = (
            f"Its `image_mean`, `image_std` and `rescale_factor` are mmalign's times {scale:.6f}: the same "
            "normalisation, and transformers' padding colour `int(image_mean · 255)` becomes mmalign's."
        )
    else:
        scaled = "Its `image_mean` and `image_std` are mmalign's."
    text = f"""# llava-hf export of an mmalign model

```python
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

processor = AutoProcessor.from_pretrained(path, backend="pil")  # "pil": pixels identical to mmalign's
model = LlavaForConditionalGeneration.from_pretrained(path)
conversation = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What is shown?"}}]}}]
prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
inputs = processor(images=Image.open("photo.jpg"), text=prompt, return_tensors="pt")
answer = model.generate(**inputs, max_new_tokens=64, do_sample=False)
```

mmalign's pixel processing: `{cfg.mode}` mode, {cfg.size}×{cfg.size}, {cfg.resample}, mean
{list(cfg.mean)}, std {list(cfg.std)}. The processor reproduces it with `LlavaImageProcessor`
(`do_pad` = {cfg.mode == "pad"}, no centre crop). {scaled}

Known differences from mmalign's processing:
{differences}- transformers' default torchvision backend resizes with its own bicubic kernel: one or two grey
  levels on a few percent of the pixels (more on noisy images being enlarged); load with
  `backend="pil"` for identical pixels.
- mmalign applies an image's EXIF orientation and, in `pad` mode, composites transparent pixels onto
  the padding colour; transformers composites them onto white and rotates only images it opens
  itself (a path or URL), not PIL images passed in. Pass upright RGB images.
- The prompt already holds the tokenizer's special tokens (e.g. BOS): when calling `processor(text=...)`
  on it directly with a tokenizer that adds them, pass `add_special_tokens=False`
  (`processor.apply_chat_template(..., tokenize=True)` does this itself).
"""
    (directory / "README.md").write_text(text)
