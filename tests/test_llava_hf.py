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
    spec = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert spec["size"] == {"height": 32, "width": 32} and spec["do_center_crop"] is False
    assert tuple(spec["image_mean"]) == model.cfg.image_processor.mean


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
