"""Stage-0 encoder pretraining, the tiny preset built offline, and the ShapeWorld eval path."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from mmalign.data.formats import load_llava
from mmalign.data.media import ImageProcessorConfig
from mmalign.data.processor import MultimodalProcessor
from mmalign.models.builders import tiny_vision
from mmalign.models.checkpoint import load_lmm
from mmalign.shapeworld import COLORS, IGNORE_INDEX, SHAPES, WorldConfig, generate
from mmalign.shapeworld.recipe.stage0 import (
    CellHeads,
    Stage0Config,
    cell_accuracy,
    make_batch,
    pretrain_encoder,
    video_frame,
)
from mmalign.shapeworld.recipe.tiny_preset import TinyPresetConfig, build_tiny_shapeworld
from mmalign.shapeworld.video import frame_truth, sample_video

IP = ImageProcessorConfig(size=60, mode="resize", mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("sw") / "data"
    generate(out, n_images=60, n_videos=6, seed=1, cfg=WorldConfig(), progress=False)
    return out


def test_stage0_learns_cells_quickly():
    torch.manual_seed(0)
    enc = tiny_vision(
        image_size=60, patch_size=20, hidden_size=64, num_layers=1, num_heads=4, intermediate_size=128
    )
    pixels, targets = make_batch(random.Random(5), WorldConfig(), IP, 128, "t")
    with torch.no_grad():
        before = cell_accuracy(CellHeads(64, WorldConfig().grid)(enc(pixels)), targets)["cell"]
    metrics = pretrain_encoder(
        enc, WorldConfig(), IP, Stage0Config(steps=60, batch_size=32, warmup=10, eval_scenes=128)
    )
    # 60 steps are enough for emptiness and colour (shape identity takes a few hundred).
    assert metrics["empty"] > 0.97 and metrics["color"] > 0.8
    assert metrics["row"] > 0.75 and metrics["col"] > 0.75  # location is kept (chance 0.33)
    assert metrics["cell"] > before + 0.2


def test_video_frame_targets_follow_the_object_centres():
    world = WorldConfig()
    for seed in range(20):
        image, cells = video_frame(random.Random(seed), world, f"v{seed}")
        assert image.size == (world.image_size, world.image_size)
        # Replay the same draws to know which frame was rendered and what it holds.
        rng = random.Random(seed)
        video = sample_video(rng, world, f"v{seed}")
        truth = frame_truth(video.tracks, world, rng.randrange(world.video_frames))
        centres = [fo.row * world.grid + fo.col for fo in truth]
        assert sorted(np.flatnonzero(cells["empty"] == 0).tolist()) == sorted(set(centres))
        for fo, i in zip(truth, centres, strict=True):
            shared = centres.count(i) > 1
            assert cells["shape"][i] == (IGNORE_INDEX if shared else SHAPES.index(fo.shape))
            assert cells["color"][i] == (IGNORE_INDEX if shared else COLORS.index(fo.color))
        assert (cells["shape"][cells["empty"] == 1] == IGNORE_INDEX).all()


def test_stage0_video_share_mixes_frames_and_reports_them():
    pixels, targets = make_batch(random.Random(0), WorldConfig(), IP, 8, "m", video_share=0.5)
    assert pixels.shape == (8, 3, 60, 60) and targets["shape"].shape == (8, 9)
    enc = tiny_vision(
        image_size=60, patch_size=20, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64
    )
    cfg = Stage0Config(steps=2, batch_size=8, warmup=1, eval_scenes=16, video_share=0.5)
    metrics = pretrain_encoder(enc, WorldConfig(), IP, cfg)
    assert {"cell", "video_cell", "video_shape", "video_empty"} <= set(metrics)
    with pytest.raises(ValueError, match="video_share"):
        Stage0Config(video_share=1.5)


def test_stage0_rejects_an_encoder_whose_patches_are_not_cells():
    enc = tiny_vision(
        image_size=60, patch_size=10, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64
    )
    with pytest.raises(ValueError, match="one patch per grid cell"):
        pretrain_encoder(enc, WorldConfig(), IP, Stage0Config(steps=1))


def test_shapeworld_records_load_and_encode(dataset, tokenizer):
    examples = load_llava(dataset / "llava" / "train.json", media_root=dataset)
    assert examples and {len(e.images) + len(e.videos) for e in examples} == {1}
    vision = tiny_vision(
        image_size=60, patch_size=20, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64
    )
    from mmalign.models.builders import tiny_lmm

    model = tiny_lmm(
        tokenizer, vision, llm_hidden_size=48, llm_layers=1, llm_heads=4, llm_intermediate_size=96
    )
    proc = MultimodalProcessor.for_model(model, tokenizer)
    video_ex = next(e for e in examples if e.videos)
    feats = [proc.encode(examples[0]), proc.encode(video_ex)]
    assert feats[0]["images"].shape == (1, 3, 60, 60)
    assert feats[1]["videos"].shape == (1, model.cfg.video_frames, 3, 60, 60)
    batch = proc.collate(feats)
    out = model(
        batch["input_ids"], batch["attention_mask"], batch["images"], batch["videos"], batch["labels"]
    )
    assert torch.isfinite(out["loss"])


@pytest.mark.slow
def test_tiny_preset_builds_saves_loads_and_evaluates(dataset, tmp_path):
    from mmalign.eval.shapeworld import EvalLimits, evaluate_split, format_report

    cfg = TinyPresetConfig(
        data=str(dataset),
        out=str(tmp_path / "base"),
        vocab_size=400,
        stage0=Stage0Config(steps=20, batch_size=16, warmup=5, eval_scenes=32),
    )
    summary = build_tiny_shapeworld(cfg)
    assert summary["image_tokens"] == 9 and summary["video_tokens"] == 72
    saved = json.loads((tmp_path / "base" / "stage0_metrics.json").read_text())
    assert saved["stage0"]["cell"] == summary["stage0"]["cell"]
    model, tok = load_lmm(tmp_path / "base")
    assert model.cfg.vision.frozen and not any(p.requires_grad for p in model.vision.parameters())
    assert len(tok) == 400
    # The loaded encoder is the stage-0 one (not a fresh init): identical features to a second load.
    again, _ = load_lmm(tmp_path / "base")
    x = torch.randn(1, 3, 60, 60)
    torch.testing.assert_close(model.vision(x), again.vision(x))
    proc = MultimodalProcessor.for_model(model, tok)
    result = evaluate_split(
        model, proc, dataset, "test", EvalLimits(n_images=4, n_videos=1, batch_size=8, max_new_tokens=8)
    )
    assert result["chair"]["n_captions"] == 4
    assert sum(result["qa"]["n"].values()) > 0 and sum(result["video_qa"]["n"].values()) > 0
    assert set(result["pope"]) == {"random", "popular", "adversarial"}
    assert all(m["n"] > 0 for m in result["pope"].values())
    assert "POPE adversarial F1" in format_report(result)


def test_bf16_load_gives_bf16_forward(tiny_model, tokenizer, tmp_path):
    from mmalign.models.checkpoint import save_lmm

    save_lmm(tiny_model, tokenizer, tmp_path / "c")
    model, _ = load_lmm(tmp_path / "c", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ids = torch.tensor([[model.cfg.image_token_id] * model.image_tokens + [20, 21]])
    img = torch.randn(1, 3, 32, 32)
    out = model(ids, images=img)
    assert out["logits"].dtype == torch.bfloat16
    ref = tiny_model(ids, images=img)
    torch.testing.assert_close(
        out["logits"].float(), ref["logits"], atol=0.1, rtol=0.05
    )  # bf16 rounding only
