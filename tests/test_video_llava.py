"""Video-LLaVA import/export: same logits as transformers' VideoLlavaForConditionalGeneration.

A tiny Video-LLaVA (two 32 px CLIP towers, patch 8, a 2-layer Llama) is built from config and saved
as a user's folder would be: weights, tokenizer, VideoLlavaProcessor. Logits must match transformers'
to 1e-5 on an image prompt, an 8-frame video prompt (8 · 17 = 136 tokens: CLS kept per frame) and
a text-only prompt.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmalign.models.checkpoint import load_lmm, load_model, save_lmm
from mmalign.models.video_llava import export_video_llava, import_video_llava, lmm_to_video_llava

FRAMES, PER_FRAME, PER_IMAGE = 8, 17, 16  # 32 px / patch 8 = 16 patches (+ CLS for frames)


def _tiny_video_llava(tokenizer):
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        VideoLlavaConfig,
        VideoLlavaForConditionalGeneration,
    )

    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    config = VideoLlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_seq_length=PER_IMAGE,
        video_seq_length=FRAMES * PER_FRAME,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    return VideoLlavaForConditionalGeneration(config).eval()


def _save_user_folder(hf, tokenizer, directory):
    """Weights + tokenizer + VideoLlavaProcessor, as a published Video-LLaVA-7B-hf folder holds."""
    from transformers import VideoLlavaImageProcessor, VideoLlavaProcessor, VideoLlavaVideoProcessor

    hf.save_pretrained(directory)
    side = {"height": 32, "width": 32}
    processor = VideoLlavaProcessor(
        image_processor=VideoLlavaImageProcessor(size={"shortest_edge": 32}, crop_size=side),
        video_processor=VideoLlavaVideoProcessor(size={"shortest_edge": 32}, crop_size=side),
        tokenizer=tokenizer,
        patch_size=8,
    )
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def folder(make_tokenizer, tmp_path_factory):
    tokenizer = make_tokenizer()
    hf = _tiny_video_llava(tokenizer)
    directory = _save_user_folder(hf, tokenizer, tmp_path_factory.mktemp("video_llava") / "hf")
    return hf, directory


def _inputs(model):
    """(ids, mask, images, videos) for a batch of one image row and one video row, and a text row."""
    img, vid = model.cfg.image_token_id, model.cfg.video_token_id
    torch.manual_seed(1)
    image_ids = torch.tensor([[1, *([img] * PER_IMAGE), 30, 31, 32]])
    video_ids = torch.tensor([[1, 40, *([vid] * (FRAMES * PER_FRAME)), 41, 42]])
    text_ids = torch.tensor([[1, 50, 51, 52, 53, 54]])
    return image_ids, video_ids, text_ids, torch.randn(1, 3, 32, 32), torch.randn(1, FRAMES, 3, 32, 32)


def _max_differences(hf, model):
    image_ids, video_ids, text_ids, pixels, videos = _inputs(model)
    with torch.no_grad():
        return {
            "image": (
                hf(input_ids=image_ids, pixel_values=pixels).logits
                - model(image_ids, images=pixels)["logits"]
            )
            .abs()
            .max()
            .item(),
            "video": (
                hf(input_ids=video_ids, pixel_values_videos=videos).logits
                - model(video_ids, videos=videos)["logits"]
            )
            .abs()
            .max()
            .item(),
            "text": (hf(input_ids=text_ids).logits - model(text_ids)["logits"]).abs().max().item(),
        }


def test_import_gives_transformers_logits_on_image_video_and_text(folder):
    hf, directory = folder
    model, tokenizer = load_model(directory)
    assert model.video_vision is not None and model.cfg.video_frames == FRAMES
    assert (model.image_tokens, model.video_tokens) == (PER_IMAGE, FRAMES * PER_FRAME)
    assert (
        model.cfg.video_token_id == tokenizer.convert_tokens_to_ids("<video>") == hf.config.video_token_index
    )
    assert model.cfg.image_processor.size == 32
    # The towers really are two: the video path must not run through the image tower.
    assert not torch.equal(next(model.vision.parameters()), next(model.video_vision.parameters()))
    diffs = _max_differences(hf, model)
    print("max |logit difference| vs transformers:", diffs)
    assert max(diffs.values()) <= 1e-5, diffs

    # One batch holding an image row and a video row (images and frames in one embed call).
    image_ids, video_ids, _, pixels, videos = _inputs(model)
    pad = video_ids.shape[1] - image_ids.shape[1]
    ids = torch.cat([torch.cat([image_ids, torch.zeros(1, pad, dtype=torch.long)], 1), video_ids])
    mask = torch.ones_like(ids)
    mask[0, image_ids.shape[1] :] = 0
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels, pixel_values_videos=videos).logits
        ours = model(ids, mask, images=pixels, videos=videos)["logits"]
    assert (ref - ours)[mask.bool()].abs().max().item() <= 1e-5


def test_export_round_trip_loads_in_transformers_with_the_same_logits(folder, tmp_path):
    from transformers import AutoProcessor, VideoLlavaForConditionalGeneration

    hf, directory = folder
    model, tokenizer = import_video_llava(directory)
    export_video_llava(model, tokenizer, tmp_path / "out")
    again = VideoLlavaForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    diffs = _max_differences(again, model)
    assert max(diffs.values()) <= 1e-5, diffs
    for name in ("image_tower", "video_tower"):
        ours, theirs = getattr(again.model, name).state_dict(), getattr(hf.model, name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert (
        json.loads((tmp_path / "out" / "config.json").read_text())["video_seq_length"] == FRAMES * PER_FRAME
    )
    assert (tmp_path / "out" / "README.md").exists()

    # The exported processor expands <image> / <video> to what the model reads.
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(FRAMES)]
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    out = processor(text=["<image> hi", "<video> hi"], images=[image], videos=[frames], padding=True)
    ids = out["input_ids"]
    assert int((ids == model.cfg.image_token_id).sum()) == model.image_tokens
    assert int((ids == model.cfg.video_token_id).sum()) == model.video_tokens
    assert tuple(out["pixel_values_videos"].shape) == (1, FRAMES, 3, 32, 32)

    # And back: the export imports again to the same model.
    model2, _ = load_model(tmp_path / "out")
    assert max(_max_differences(hf, model2).values()) <= 1e-5


def test_mmalign_checkpoint_keeps_the_video_tower(folder, tmp_path):
    hf, directory = folder
    model, tokenizer = load_model(directory)
    save_lmm(model, tokenizer, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "video_vision").is_dir()
    again, _ = load_lmm(tmp_path / "ckpt")
    assert again.cfg.video_vision == model.cfg.video_vision
    assert max(_max_differences(hf, again).values()) <= 1e-5
    half, _ = load_model(directory, dtype=torch.bfloat16)  # raises if any weight is not bf16
    assert next(half.video_vision.parameters()).dtype == torch.bfloat16


def test_always_run_media_keeps_both_towers_in_the_graph(folder):
    """ZeRO-3 needs every rank to run both towers each step: a text-only batch runs them on blanks."""
    hf, directory = folder
    model, _ = load_model(directory)
    model.always_run_media = True
    for tower in (model.vision, model.video_vision):
        tower.requires_grad_(True)
    _, _, text_ids, _, _ = _inputs(model)
    out = model(text_ids)["logits"]
    with torch.no_grad():
        assert (out - hf(input_ids=text_ids).logits).abs().max().item() <= 1e-5
    out.sum().backward()
    # Both towers ran (up to the feature layer, -2: the last block and post-norm never run).
    reached = [
        {n for n, p in t.named_parameters() if p.grad is not None} for t in (model.vision, model.video_vision)
    ]
    assert reached[0] == reached[1] and any("patch_embedding" in n for n in reached[0])


def test_bad_folders_are_named(folder, tmp_path, tokenizer):
    hf, directory = folder
    with pytest.raises(FileNotFoundError, match="no config.json"):
        import_video_llava(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="neither an mmalign checkpoint"):
        load_model(tmp_path)
    (tmp_path / "llava").mkdir()
    (tmp_path / "llava" / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ValueError, match="not a Video-LLaVA checkpoint"):
        import_video_llava(tmp_path / "llava")
    hf.save_pretrained(tmp_path / "no_tokenizer")
    with pytest.raises(FileNotFoundError, match=r"no_tokenizer: Video-LLaVA folder without tokenizer"):
        load_model(tmp_path / "no_tokenizer")
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "config.json").write_text((directory / "config.json").read_text())
    tokenizer.save_pretrained(tmp_path / "no_weights")
    with pytest.raises(FileNotFoundError, match=r"no_weights: Video-LLaVA folder without weights"):
        import_video_llava(tmp_path / "no_weights")


def test_export_refuses_a_video_path_video_llava_cannot_express(tiny_model):
    """A shared CLIP tower that drops the CLS: Video-LLaVA's video tower keeps every token."""
    with pytest.raises(ValueError, match="drops the CLS"):
        lmm_to_video_llava(tiny_model)


def test_train_vision_trains_the_video_tower_too(folder):
    """``parts.train_vision`` covers Video-LLaVA's video tower (every video's frames go through
    it): its weights get an optimizer group and it is in train mode; frozen, neither."""
    from mmalign.training.parts import OptimConfig, PartsConfig, configure_parts

    model, _ = import_video_llava(folder[1], dtype=torch.float32)
    tower = {id(p) for p in model.video_vision.parameters()}
    groups = configure_parts(model, PartsConfig(train_vision=True), OptimConfig(lr=1e-4))
    trained = {id(p) for g in groups for p in g["params"]}
    assert tower <= trained and all(p.requires_grad for p in model.video_vision.parameters())
    assert model.train().video_vision.training
    groups = configure_parts(model, PartsConfig(train_vision=False), OptimConfig(lr=1e-4))
    assert not tower & {id(p) for g in groups for p in g["params"]}
    assert not any(p.requires_grad for p in model.video_vision.parameters())
    assert not model.train().video_vision.training


def test_adapter_folder_keeps_the_video_tower(folder, tmp_path):
    """A LoRA run's adapter folder holds the video tower's weights (they train with train_vision)."""
    from safetensors.torch import load_file

    from mmalign.training.checkpoint import save_adapter

    model, _ = import_video_llava(folder[1], dtype=torch.float32)
    with torch.no_grad():
        next(model.video_vision.parameters()).add_(1.0)
    saved = load_file(str(save_adapter(model, folder[1], tmp_path / "adapter") / "media.safetensors"))
    ours = {f"video_vision.{k}": v for k, v in model.video_vision.state_dict().items()}
    assert ours and all(torch.equal(saved[k], v) for k, v in ours.items())
