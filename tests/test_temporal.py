"""The video temporal mixer, its supervised training on ShapeWorld motion, and LLM depth growth."""

from __future__ import annotations

import random

import pytest
import torch

from mmalign.models.builders import tiny_lmm, tiny_vision
from mmalign.models.checkpoint import load_lmm, save_lmm
from mmalign.models.grow import grow_llm
from mmalign.models.lmm import LMMConfig
from mmalign.models.temporal import TemporalMixer
from mmalign.shapeworld import IGNORE_INDEX, WorldConfig
from mmalign.shapeworld.recipe.temporal import TemporalConfig, motion_targets, train_temporal
from mmalign.shapeworld.video import DIRECTIONS, sample_video
from mmalign.training.parts import OptimConfig, PartsConfig, configure_parts

GRID_VISION = {"image_size": 60, "patch_size": 20, "hidden_size": 32, "num_layers": 1, "num_heads": 4}


def _model(tokenizer, frames: int = 8):
    vision = tiny_vision(intermediate_size=64, select="patch", frozen=True, **GRID_VISION)
    return tiny_lmm(
        tokenizer, vision, llm_hidden_size=32, llm_layers=2, llm_heads=4, llm_intermediate_size=64,
        video_frames=frames, video_temporal="sinusoid", image_spatial="sinusoid",
    )  # fmt: skip


def _video_ids(model, extra=(10, 11)):
    return torch.tensor([[1] + [model.cfg.video_token_id] * model.video_tokens + list(extra)])


def test_mixer_is_identity_until_trained_and_mixes_frames():
    torch.manual_seed(0)
    mixer = TemporalMixer(32, layers=2, heads=4)
    x = torch.randn(2, 18, 32)
    torch.testing.assert_close(mixer(x), x)
    with torch.no_grad():
        for block in mixer.blocks:
            block.out.weight.normal_()
    y = x.clone()
    y[:, -1] += torch.randn(32)  # change one token: every token's output changes (attention spans the clip)
    assert (mixer(y)[:, 0] - mixer(x)[:, 0]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="divisible"):
        TemporalMixer(30, layers=1, heads=4)
    with pytest.raises(ValueError, match="≥ 1 layer"):
        TemporalMixer(32, layers=0, heads=4)


def test_config_rejects_bad_mixer_settings():
    with pytest.raises(ValueError, match="video_mixer_layers"):
        LMMConfig(video_mixer_layers=-1)
    with pytest.raises(ValueError, match="video_mixer_heads"):
        LMMConfig(video_mixer_heads=0)


def test_mixer_checkpoint_round_trip_and_training_parts(tokenizer, tmp_path):
    model = _model(tokenizer, frames=2)
    ids, vid = _video_ids(model), torch.randn(1, 2, 3, 60, 60)
    model.eval()
    with torch.no_grad():
        before = model(ids, videos=vid)["logits"]
    mixer = model.add_temporal_mixer(layers=1, heads=4)
    with pytest.raises(ValueError, match="already has"):
        model.add_temporal_mixer(layers=1, heads=4)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, videos=vid)["logits"], before)  # identity at init
        for p in mixer.parameters():
            p.add_(0.05 * torch.randn_like(p))
        after = model(ids, videos=vid)["logits"]
    assert (after - before).abs().max() > 1e-4
    save_lmm(model, tokenizer, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "temporal.safetensors").exists()
    loaded, _ = load_lmm(tmp_path / "ckpt")
    assert loaded.cfg.video_mixer_layers == 1 and loaded.temporal is not None
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, videos=vid)["logits"], after)
    # The mixer trains with the projector and is frozen with it.
    groups = configure_parts(loaded, PartsConfig(), OptimConfig(lr=1e-3))
    assert "temporal" in {g["name"] for g in groups}
    configure_parts(loaded, PartsConfig(train_projector=False), OptimConfig(lr=1e-3))
    assert not any(p.requires_grad for p in loaded.temporal.parameters())


def test_always_run_media_runs_the_mixer_on_batches_without_video(tokenizer):
    model = _model(tokenizer, frames=2)
    model.add_temporal_mixer(layers=1, heads=4)
    order: list[str] = []
    for name in ("vision", "temporal", "projector"):
        getattr(model, name).register_forward_hook(lambda *a, name=name: order.append(name))
    ids = torch.tensor([[20, 21, 22, 23]])
    plain = model(ids)["logits"]
    assert order == []
    model.always_run_media = True
    out = model(ids, labels=ids)
    torch.testing.assert_close(out["logits"], plain)
    out["loss"].backward()  # in the graph (as ZeRO-3 needs on every rank), with zero gradient
    assert all(p.grad is not None and float(p.grad.abs().sum()) == 0.0 for p in model.temporal.parameters())
    # Same module order whatever the batch holds (text only, images only, a video).
    image_ids = torch.tensor([[model.cfg.image_token_id] * model.image_tokens + [20]])
    video_ids = torch.tensor([[model.cfg.video_token_id] * model.video_tokens + [20]])
    for kwargs in ({"input_ids": image_ids, "images": torch.randn(1, 3, 60, 60)},
                   {"input_ids": video_ids, "videos": torch.randn(1, 2, 3, 60, 60)}):  # fmt: skip
        order.clear()
        model(**kwargs)
        assert order == ["vision", "temporal", "projector"], kwargs.keys()


def test_motion_targets_replay_the_tracks():
    world = WorldConfig()
    checked = ignored = 0
    for seed in range(30):
        video = sample_video(random.Random(seed), world, f"v{seed}")
        targets = motion_targets(video, world.grid)
        assert targets.shape == (world.video_frames, world.grid**2)
        for t, frame in enumerate(video.frames):
            cells = [fo.row * world.grid + fo.col for fo in frame]
            for fo, cell in zip(frame, cells, strict=True):
                if cells.count(cell) > 1:
                    assert targets[t, cell] == IGNORE_INDEX
                    ignored += 1
                else:
                    assert DIRECTIONS[targets[t, cell]] == video.tracks[fo.track].direction
                    checked += 1
            empty = set(range(world.grid**2)) - set(cells)
            assert all(targets[t, c] == IGNORE_INDEX for c in empty)
    assert checked > 100


def test_train_temporal_trains_only_the_mixer(tokenizer):
    # Mechanics only: that the mixer *learns* motion is measured on the recipe's trained encoder
    # (temporal_metrics.json, and the video-motion bar in test_bars.py); a random encoder is slow.
    torch.manual_seed(0)
    model = _model(tokenizer)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TemporalConfig(
        init_from="-", data="-", out="-", layers=1, heads=4, steps=4, batch_size=4, warmup=2, eval_clips=8
    )
    metrics = train_temporal(model, WorldConfig(), cfg)
    assert 0.0 <= metrics["motion"] <= 1.0 and metrics["seconds"] > 0
    assert model.cfg.video_mixer_layers == 1 and model.temporal is not None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())
    assert any(float(block.out.weight.abs().sum()) > 0 for block in model.temporal.blocks)  # moved off zero
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="frames per clip"):
        train_temporal(_model(tokenizer, frames=4), WorldConfig(), cfg)


def test_grow_llm_keeps_the_function_and_round_trips(tokenizer, tmp_path):
    model = _model(tokenizer, frames=2)
    ids = torch.randint(20, 200, (2, 12))
    model.eval()
    with torch.no_grad():
        before = model.llm(ids).logits
        greedy = model.llm.generate(ids[:, :4], max_new_tokens=6, do_sample=False)
    grow_llm(model.llm, 2)
    assert model.llm.config.num_hidden_layers == 4 and len(model.llm.model.layers) == 4
    assert [layer.self_attn.layer_idx for layer in model.llm.model.layers] == [0, 1, 2, 3]
    with torch.no_grad():
        torch.testing.assert_close(model.llm(ids).logits, before)
        assert torch.equal(model.llm.generate(ids[:, :4], max_new_tokens=6, do_sample=False), greedy)
    # The new blocks are trainable: their zeroed projections get gradients.
    model.llm.train()
    model.llm(ids, labels=ids).loss.backward()
    assert float(model.llm.model.layers[-1].self_attn.o_proj.weight.grad.abs().sum()) > 0
    save_lmm(model, tokenizer, tmp_path / "grown")
    loaded, _ = load_lmm(tmp_path / "grown")
    assert len(loaded.llm.model.layers) == 4
    with torch.no_grad():
        torch.testing.assert_close(loaded.llm(ids).logits, before)


def test_grow_llm_rejects_what_it_cannot_grow(tokenizer):
    model = _model(tokenizer, frames=2)
    with pytest.raises(ValueError, match="≥ 1"):
        grow_llm(model.llm, 0)
    with pytest.raises(ValueError, match="model.layers"):
        grow_llm(torch.nn.Linear(2, 2), 1)


def test_sft_config_validates_growth():
    from mmalign.training.parts import LoraConfig
    from mmalign.training.sft_config import SFTConfig

    assert SFTConfig(grow_llm_layers=1).grow_llm_layers == 1
    with pytest.raises(ValueError, match="≥ 0"):
        SFTConfig(grow_llm_layers=-1)
    with pytest.raises(ValueError, match="not LoRA"):
        SFTConfig(grow_llm_layers=1, lora=LoraConfig(enabled=True))


def test_lora_adapter_folder_carries_the_trained_mixer(tokenizer, tmp_path):
    from mmalign.training.checkpoint import load_with_adapter, save_adapter
    from mmalign.training.parts import LoraConfig, apply_lora

    model = _model(tokenizer, frames=2)
    model.add_temporal_mixer(layers=1, heads=4)
    save_lmm(model, tokenizer, tmp_path / "base")
    apply_lora(model, LoraConfig(enabled=True, r=4, alpha=8))
    with torch.no_grad():
        for p in model.temporal.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_adapter(model, tmp_path / "base", tmp_path / "adapter")
    loaded, _ = load_with_adapter(tmp_path / "adapter")
    for key, value in model.temporal.state_dict().items():
        torch.testing.assert_close(loaded.temporal.state_dict()[key], value)


def test_mixer_follows_the_model_dtype_and_needs_a_frame_code(tokenizer, tmp_path):
    model = _model(tokenizer, frames=2)
    model.add_temporal_mixer(layers=1, heads=4)
    save_lmm(model, tokenizer, tmp_path / "ckpt")
    loaded, _ = load_lmm(tmp_path / "ckpt", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in loaded.temporal.parameters())
    ids = _video_ids(loaded)
    with torch.no_grad():
        assert (
            loaded(ids, videos=torch.randn(1, 2, 3, 60, 60, dtype=torch.bfloat16))["logits"].isfinite().all()
        )
    vision = tiny_vision(intermediate_size=64, select="patch", frozen=True, **GRID_VISION)
    uncoded = tiny_lmm(tokenizer, vision, llm_hidden_size=32, llm_layers=2, llm_heads=4, llm_intermediate_size=64,
                       video_frames=8)  # fmt: skip
    cfg = TemporalConfig(init_from="-", data="-", out="-", steps=1, batch_size=1, eval_clips=1)
    with pytest.raises(ValueError, match="video_temporal"):
        train_temporal(uncoded, WorldConfig(), cfg)
