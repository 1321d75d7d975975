"""A llava-hf export used as transformers users do: AutoProcessor + LlavaForConditionalGeneration.

Pixels, prompt text, image-token expansion, logits and greedy answers must equal mmalign's own,
for square and non-square images in both pixel modes.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mmalign.data.media import CLIP_MEAN, CLIP_STD, ImageProcessorConfig, process_image
from mmalign.models.llava_hf import export_llava_hf, import_llava_hf
from mmalign.models.llava_hf_processor import fill_scale, pad_fill

SIZES = [(32, 32), (50, 30), (30, 50), (640, 480), (17, 90)]
MEANS = {"clip": (CLIP_MEAN, CLIP_STD), "half": ((0.5,) * 3, (0.5,) * 3)}


def _lmm(tokenizer, kind: str = "clip", select: str = "patch", mode: str = "pad", mean: str = "clip", **kw):
    from mmalign.models.builders import tiny_lmm, tiny_vision

    vision = tiny_vision(
        kind=kind,
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        feature_layer=-2,
        select=select,
    )
    model = tiny_lmm(
        tokenizer, vision, llm_hidden_size=48, llm_layers=2, llm_heads=4, llm_intermediate_size=96, **kw
    )
    m, s = MEANS[mean]
    model.cfg.image_processor = ImageProcessorConfig(size=32, mode=mode, mean=m, std=s)
    return model.eval()


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _scene(w: int, h: int) -> Image.Image:
    """A smooth picture: a gradient with a few flat shapes (what photos and renders look like)."""
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    arr = (255 * np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)).astype(np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    draw.ellipse((w * 0.1, h * 0.1, w * 0.5, h * 0.6), fill=(220, 30, 30))
    draw.rectangle((w * 0.55, h * 0.4, w * 0.9, h * 0.9), fill=(30, 30, 200))
    return img


def _pixels(processor, img: Image.Image) -> torch.Tensor:
    return processor.image_processor(images=img, return_tensors="pt")["pixel_values"][0]


def test_fill_scale_finds_one_factor_for_every_channel():
    assert fill_scale((0.4, 0.4, 0.4), (102, 102, 102)) == 1.0  # int(102.0…) already right
    k = fill_scale(CLIP_MEAN, (123, 117, 104))  # round(mean·255), where int() gives 122, 116, 104
    assert k is not None and tuple(int(k * m * 255) for m in CLIP_MEAN) == (123, 117, 104)
    k = fill_scale((0.5,) * 3, (128,) * 3)
    assert k is not None and int(k * 0.5 * 255) == 128
    assert fill_scale((0.5, 0.002, 0.5), (128, 1, 128)) is None  # channels need disjoint factors
    # mmalign's padding colour (read back from process_image) is the mean colour.
    fill = pad_fill(ImageProcessorConfig(size=8, mode="resize"))
    assert all(abs(f - m * 255) < 1 for f, m in zip(fill, CLIP_MEAN, strict=True))


@pytest.mark.parametrize("mean", ["clip", "half"])
@pytest.mark.parametrize("mode", ["pad", "resize"])
def test_exported_processor_reproduces_mmalign_pixels(tokenizer, tmp_path, mode, mean, caplog):
    from transformers import AutoProcessor

    model = _lmm(tokenizer, mode=mode, mean=mean)
    cfg = model.cfg.image_processor
    with caplog.at_level(logging.WARNING, logger="mmalign"):
        export_llava_hf(model, tokenizer, tmp_path)
    assert not [r for r in caplog.records if r.name.startswith("mmalign")]  # nothing left to warn about
    readme = (tmp_path / "README.md").read_text()
    assert f"`{mode}` mode" in readme and 'backend="pil"' in readme

    exact = AutoProcessor.from_pretrained(tmp_path, backend="pil")
    default = AutoProcessor.from_pretrained(tmp_path)
    assert type(exact.image_processor).__name__ == "LlavaImageProcessorPil"
    assert type(default.image_processor).__name__ == "LlavaImageProcessor"  # torchvision
    level = 1 / 255 / min(cfg.std)
    for w, h in SIZES:
        for img in (_noise(w, h), _scene(w, h)):
            ours = process_image(img, cfg)
            assert (_pixels(exact, img) - ours).abs().max().item() <= 1e-5, (w, h)
        # The torchvision backend's own bicubic kernel: about one grey level on smooth pictures.
        diff = (_pixels(default, _scene(w, h)) - process_image(_scene(w, h), cfg)).abs()
        assert diff.max().item() <= 3 * level + 1e-5 and diff.mean().item() <= 0.1 * level, (w, h)

    # Importing the export gives back mmalign's settings (the scaled mean/std folded back).
    imported, _ = import_llava_hf(tmp_path)
    back = imported.cfg.image_processor
    assert (back.size, back.mode, back.resample) == (cfg.size, cfg.mode, cfg.resample)
    assert np.allclose(back.mean, cfg.mean, atol=1e-9) and np.allclose(back.std, cfg.std, atol=1e-9)


def test_a_pad_colour_that_cannot_be_reproduced_is_warned_and_recorded(tokenizer, tmp_path, caplog):
    from transformers import AutoProcessor

    model = _lmm(tokenizer, mode="pad")
    model.cfg.image_processor = ImageProcessorConfig(size=32, mode="pad", mean=(0.5, 0.002, 0.5))
    with caplog.at_level(logging.WARNING, logger="mmalign"):
        export_llava_hf(model, tokenizer, tmp_path)
    assert any("pad colour" in r.getMessage() for r in caplog.records)
    assert "pad colour: mmalign pads with RGB (128, 1, 128)" in (tmp_path / "README.md").read_text()
    processor = AutoProcessor.from_pretrained(tmp_path, backend="pil")
    img = _noise(50, 30)
    diff = (_pixels(processor, img) - process_image(img, model.cfg.image_processor)).abs().max().item()
    level = 1 / 255 / min(CLIP_STD)
    assert 0 < diff <= 2 * level + 1e-5  # the closest export: a grey level or two near the border
    assert (
        _pixels(processor, _noise(32, 32)) - process_image(_noise(32, 32), model.cfg.image_processor)
    ).abs().max() <= 1e-5


TYPED = [
    {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the circle?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
    {"role": "user", "content": [{"type": "text", "text": "How many objects are there?"}]},
]
STRINGS = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "<image>\nWhat colour is the circle?"},
    {"role": "assistant", "content": "Red."},
    {"role": "user", "content": "How many objects are there?"},
]


@pytest.mark.parametrize("template", ["vicuna_v1", "chatml", "llama3", "plain", None])
def test_exported_chat_template_renders_mmalign_prompt(make_tokenizer, tmp_path, template):
    from transformers import AutoProcessor

    from mmalign.data.processor import MultimodalProcessor
    from mmalign.data.templates import render

    tok = make_tokenizer(template="chatml")
    if template is None:  # no template anywhere: mmalign falls back to vicuna_v1
        tok.chat_template = None
    model = _lmm(tok, template=template)
    export_llava_hf(model, tok, tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path, backend="pil")
    ours = MultimodalProcessor.for_model(model, tok)

    prompt = processor.apply_chat_template(TYPED, add_generation_prompt=True)
    assert prompt == render(tok, ours.template, STRINGS, add_generation_prompt=True)
    if template in ("vicuna_v1", None):
        assert prompt.endswith("USER: How many objects are there? ASSISTANT:") and "USER: <image>\n" in prompt
    # Same token ids, <image> expanded to the model's image tokens.
    ids = processor(images=_noise(50, 30), text=prompt)["input_ids"][0]
    assert list(ids) == ours.tokenize_prompt(STRINGS, 1, 0, "t")
    assert list(ids).count(model.cfg.image_token_id) == model.image_tokens

    # mmalign reads the exported template back (string content passes through it unchanged).
    imported, itok = import_llava_hf(tmp_path)
    again = MultimodalProcessor.for_model(imported, itok)
    assert render(itok, again.template, STRINGS, add_generation_prompt=True) == prompt
    with pytest.raises(Exception, match="text and image content parts"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "video"}]}])


def test_a_typed_content_template_of_the_tokenizer_is_exported_unchanged(tokenizer, tmp_path):
    from transformers import AutoProcessor

    llava_hf_style = (
        "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
        "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
        "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] + ' ' }}{% endfor %}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    )
    tokenizer.chat_template = llava_hf_style
    export_llava_hf(_lmm(tokenizer), tokenizer, tmp_path)
    assert (tmp_path / "chat_template.jinja").read_text() == llava_hf_style
    prompt = AutoProcessor.from_pretrained(tmp_path).apply_chat_template(
        TYPED[1:2], add_generation_prompt=True
    )
    assert prompt == "USER: <image>\nWhat colour is the circle? ASSISTANT:"


@pytest.mark.parametrize(
    "kind,select,strategy",
    [("clip", "patch", "default"), ("clip", "cls_patch", "full"), ("siglip", "patch", "full")],
)
def test_image_tokens_and_logits_match_for_each_tower(tokenizer, tmp_path, kind, select, strategy):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mmalign.data.processor import MultimodalProcessor

    model = _lmm(tokenizer, kind=kind, select=select)
    export_llava_hf(model, tokenizer, tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path, backend="pil")
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert hf.config.vision_feature_select_strategy == strategy
    assert processor.num_additional_image_tokens == (1 if kind == "clip" else 0)
    img = _scene(48, 20)
    prompt = processor.apply_chat_template(TYPED[1:2], add_generation_prompt=True)
    inputs = processor(images=img, text=prompt, return_tensors="pt")
    ids = MultimodalProcessor.for_model(model, tokenizer).tokenize_prompt(STRINGS[1:2], 1, 0, "t")
    assert inputs["input_ids"][0].tolist() == ids
    assert int((inputs["input_ids"] == model.cfg.image_token_id).sum()) == model.image_tokens
    with torch.no_grad():
        theirs = hf(**inputs).logits
        ours = model(inputs["input_ids"], images=process_image(img, model.cfg.image_processor)[None])[
            "logits"
        ]
    assert (theirs - ours).abs().max().item() <= 1e-5
