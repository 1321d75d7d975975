"""llava-hf import/export: same logits as transformers' own LlavaForConditionalGeneration."""

from __future__ import annotations

import pytest
import torch

from mmalign.models.llava_hf import export_llava_hf, import_llava_hf, lmm_to_llava_hf


def _tiny_llava(tokenizer, strategy: str, layer: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
        ).to_dict(),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
        ).to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=16 + (strategy == "full"),
        vision_feature_select_strategy=strategy,
        vision_feature_layer=layer,
    )
    return LlavaForConditionalGeneration(config).eval()


@pytest.mark.parametrize("strategy,layer", [("default", -2), ("full", -1)])
def test_import_then_export_gives_identical_logits(tokenizer, tmp_path, strategy, layer):
    from transformers import LlavaForConditionalGeneration

    hf = _tiny_llava(tokenizer, strategy, layer)
    hf.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")

    model, tok = import_llava_hf(tmp_path / "hf")
    n_img = 16 + (strategy == "full")
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
    linear = tiny_lmm(
        tokenizer,
        tiny_vision(
            image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64
        ),
        llm_hidden_size=48,
        llm_layers=1,
        llm_heads=4,
        llm_intermediate_size=96,
        projector="linear",
    )
    with pytest.raises(ValueError, match="mlp2x_gelu"):
        lmm_to_llava_hf(linear)
