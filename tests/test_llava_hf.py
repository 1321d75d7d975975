"""llava-hf import/export: same logits as transformers' own LlavaForConditionalGeneration."""

from __future__ import annotations

import pytest
import torch

from mmalign.models.llava_hf import export_llava_hf, import_llava_hf, lmm_to_llava_hf


def _tiny_llava(
    tokenizer, strategy: str = "default", layer: int = -2, tower: str = "clip", text_tie: bool = False, **top
):
    """A tiny LlavaForConditionalGeneration from config; ``top`` goes to LlavaConfig."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        SiglipVisionConfig,
    )

    torch.manual_seed(0)
    vision_cls = CLIPVisionConfig if tower == "clip" else SiglipVisionConfig
    vision = vision_cls(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=text_tie,
    )
    config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=16 + (strategy == "full" and tower == "clip"),
        vision_feature_select_strategy=strategy,
        vision_feature_layer=layer,
        **top,
    )
    return LlavaForConditionalGeneration(config).eval()


@pytest.mark.parametrize(
    "strategy,layer,tower", [("default", -2, "clip"), ("full", -1, "clip"), ("full", -2, "siglip")]
)
def test_import_then_export_gives_identical_logits(tokenizer, tmp_path, strategy, layer, tower):
    from transformers import LlavaForConditionalGeneration

    hf = _tiny_llava(tokenizer, strategy, layer, tower)
    hf.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")

    model, tok = import_llava_hf(tmp_path / "hf")
    n_img = 16 + (strategy == "full" and tower == "clip")
    assert model.image_tokens == n_img
    img_id = model.cfg.image_token_id
    ids = torch.tensor([[1, *([img_id] * n_img), 30, 31, 32, 33], [1, 40, 41, *([img_id] * n_img), 42, 43]])
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = hf(input_ids=ids, pixel_values=pixels).logits
        ours = model(ids, torch.ones_like(ids), images=pixels)["logits"]
    assert (reference - ours).abs().max().item() <= 1e-5

    export_llava_hf(model, tok, tmp_path / "out")
    again = LlavaForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        exported = again(input_ids=ids, pixel_values=pixels).logits
    assert (reference - exported).abs().max().item() <= 1e-5
    assert (tmp_path / "out" / "preprocessor_config.json").exists()


def test_export_refuses_parts_without_llava_hf_equivalent(tokenizer):
    from mmalign.models.builders import tiny_lmm, tiny_vision

    timm_model = tiny_lmm(
        tokenizer,
        tiny_vision(
            kind="timm",
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_layers=1,
            num_heads=4,
            intermediate_size=64,
        ),
        llm_hidden_size=48,
        llm_layers=1,
        llm_heads=4,
        llm_intermediate_size=96,
    )
    with pytest.raises(ValueError, match="not timm"):
        lmm_to_llava_hf(timm_model)

    def small_clip_lmm(**options):
        vision = tiny_vision(
            image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64
        )
        small_llm = {"llm_hidden_size": 48, "llm_layers": 1, "llm_heads": 4, "llm_intermediate_size": 96}
        return tiny_lmm(tokenizer, vision, **small_llm, **options)

    with pytest.raises(ValueError, match="mlp2x_gelu"):
        lmm_to_llava_hf(small_clip_lmm(projector="linear"))
    with pytest.raises(ValueError, match="image_spatial"):
        lmm_to_llava_hf(small_clip_lmm(image_spatial="sinusoid"))


def test_import_without_preprocessor_uses_the_towers_size(tokenizer, tmp_path):
    hf = _tiny_llava(tokenizer, "default", -2)
    hf.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    model, _ = import_llava_hf(tmp_path / "hf")
    assert model.cfg.image_processor.size == 32


def test_export_writes_matching_image_processor(tokenizer, tmp_path):
    import json

    hf = _tiny_llava(tokenizer, "default", -2)
    hf.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    model, tok = import_llava_hf(tmp_path / "hf")
    export_llava_hf(model, tok, tmp_path / "out")
    for name in ("preprocessor_config.json", "processor_config.json"):
        spec = json.loads((tmp_path / "out" / name).read_text())
        spec = spec.get("image_processor", spec)
        assert spec["image_processor_type"] == "LlavaImageProcessor"
        assert spec["size"] == {"height": 32, "width": 32} and spec["do_center_crop"] is False
        assert spec["do_pad"] is True  # mmalign's default pad mode, LLaVA's expand2square
    again, _ = import_llava_hf(tmp_path / "out")
    assert again.cfg.image_processor.mode == "pad"
    assert torch.allclose(
        torch.tensor(again.cfg.image_processor.mean), torch.tensor(model.cfg.image_processor.mean)
    )


def test_tied_embeddings_declared_only_at_top_level_stay_tied(tokenizer, tmp_path):
    hf = _tiny_llava(tokenizer, tie_word_embeddings=True)
    assert hf.lm_head.weight.data_ptr() == hf.model.language_model.embed_tokens.weight.data_ptr()
    hf.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    model, _ = import_llava_hf(tmp_path / "hf")
    llm = model.llm
    assert llm.get_output_embeddings().weight.data_ptr() == llm.get_input_embeddings().weight.data_ptr()
    ids = torch.tensor([[1, *([model.cfg.image_token_id] * 16), 30, 31]])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (
            hf(input_ids=ids, pixel_values=pixels).logits - model(ids, images=pixels)["logits"]
        ).abs().max() <= 1e-5


def test_siglip_with_default_strategy_is_refused(tokenizer, tmp_path):
    _tiny_llava(tokenizer, "default", tower="siglip").save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match="without a CLS token"):
        import_llava_hf(tmp_path / "hf")


def test_transformers_answers_as_mmalign_on_a_non_square_image(tiny_model, tokenizer, tmp_path):
    """Export → AutoProcessor + LlavaForConditionalGeneration: same ids, pixels, logits, greedy answer."""
    from PIL import Image, ImageDraw
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mmalign.data.formats import Example
    from mmalign.data.media import CLIP_STD, ImageProcessorConfig, process_image
    from mmalign.data.processor import MultimodalProcessor
    from mmalign.training.generation import generate_responses

    model = tiny_model
    model.cfg.image_processor = ImageProcessorConfig(size=32, mode="pad")  # LLaVA-1.5: CLIP mean, pad
    img = Image.new("RGB", (64, 28), (200, 180, 40))
    ImageDraw.Draw(img).ellipse((4, 4, 30, 24), fill=(220, 30, 30))
    img.save(tmp_path / "scene.png")
    question = "What colour is the circle?"
    example = Example(
        "q", [{"role": "user", "content": f"<image>\n{question}"}], images=[tmp_path / "scene.png"]
    )
    proc = MultimodalProcessor.for_model(model, tokenizer)
    batch = proc.collate([proc.encode_prompt(example)], padding_side="left")
    with torch.no_grad():
        ours_logits = model(batch["input_ids"], batch["attention_mask"], images=batch["images"])["logits"]
        ours = model.generate(
            batch["input_ids"], batch["attention_mask"], images=batch["images"], max_new_tokens=12,
            eos_token_id=proc.stop_token_ids, pad_token_id=proc.pad_token_id,
        )[0].tolist()  # fmt: skip
    ours_text = generate_responses(model, proc, [example], max_new_tokens=12)[0]

    export_llava_hf(model, tokenizer, tmp_path / "hf")
    processor = AutoProcessor.from_pretrained(tmp_path / "hf", backend="pil")  # Pillow resize, as mmalign
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=Image.open(tmp_path / "scene.png"), text=prompt, return_tensors="pt")
    assert inputs["input_ids"].tolist() == batch["input_ids"].tolist()
    assert (inputs["pixel_values"] - batch["images"]).abs().max().item() <= 1e-5
    # The one-call route: the image path inside the conversation, tokenised by the processor.
    with_path = [
        {
            "role": "user",
            "content": [
                {"type": "image", "path": str(tmp_path / "scene.png")},
                *conversation[0]["content"][1:],
            ],
        }
    ]
    direct = processor.apply_chat_template(
        with_path, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert direct["input_ids"].tolist() == batch["input_ids"].tolist()
    assert (direct["pixel_values"] - batch["images"]).abs().max().item() <= 1e-5
    with torch.no_grad():
        theirs_logits = hf(**inputs).logits
        out = hf.generate(**inputs, max_new_tokens=12, do_sample=False)
        # The test can tell: the old export's plain resize would have changed the logits.
        resized = process_image(img, ImageProcessorConfig(size=32, mode="resize"))[None]
        other = hf(input_ids=inputs["input_ids"], pixel_values=resized).logits
    assert (theirs_logits - ours_logits).abs().max().item() <= 1e-5
    assert (other - ours_logits).abs().max().item() > 1e-3
    assert hf.generation_config.eos_token_id in (proc.stop_token_ids, proc.stop_token_ids[0])
    theirs = out[0, inputs["input_ids"].shape[1] :].tolist()
    assert len(theirs) >= 2 and theirs == ours[: len(theirs)]
    assert all(t == proc.pad_token_id for t in ours[len(theirs) :])  # mmalign pads after the stop token
    assert processor.tokenizer.decode(theirs, skip_special_tokens=True).strip() == ours_text

    # The default (torchvision) backend: pixels within a grey level or two, the same answer here.
    default = AutoProcessor.from_pretrained(tmp_path / "hf")
    approx = default(images=Image.open(tmp_path / "scene.png"), text=prompt, return_tensors="pt")
    assert (approx["pixel_values"] - batch["images"]).abs().max().item() <= 3 / 255 / min(CLIP_STD) + 1e-5
    with torch.no_grad():
        assert hf.generate(**approx, max_new_tokens=12, do_sample=False)[0].tolist() == out[0].tolist()

    # The export imports back into mmalign: same settings, logits and answer.
    imported, itok = import_llava_hf(tmp_path / "hf")
    assert imported.cfg.image_processor.mode == "pad" and imported.cfg.image_processor.size == 32
    iproc = MultimodalProcessor.for_model(imported, itok)
    ibatch = iproc.collate([iproc.encode_prompt(example)], padding_side="left")
    assert ibatch["input_ids"].tolist() == batch["input_ids"].tolist()
    with torch.no_grad():
        again = imported(ibatch["input_ids"], ibatch["attention_mask"], images=ibatch["images"])["logits"]
    assert (again - ours_logits).abs().max().item() <= 1e-5
    assert generate_responses(imported, iproc, [example], max_new_tokens=12)[0] == ours_text
