"""Shapes and dtypes of every part, placeholder handling, generation, checkpoints."""

from __future__ import annotations

import pytest
import torch

from mmalign.data.processor import MultimodalProcessor
from mmalign.models.builders import tiny_lmm, tiny_vision
from mmalign.models.checkpoint import build_lmm, load_lmm, save_lmm
from mmalign.models.codes import add_code, grid_codes, sinusoid_codes
from mmalign.models.lmm import LMMConfig, causal_lm_loss
from mmalign.models.projector import build_projector
from mmalign.models.video import VideoEncoder
from mmalign.models.vision import TimmViT, VisionConfig, load_vision_encoder

SMALL = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_layers": 3,
    "num_heads": 4,
    "intermediate_size": 64,
}


@pytest.mark.parametrize("kind,prefix", [("clip", 1), ("siglip", 0), ("timm", 1)])
@pytest.mark.parametrize("select", ["patch", "cls_patch"])
def test_vision_encoders_shapes(kind, prefix, select):
    enc = tiny_vision(kind=kind, select=select, feature_layer=-2, **SMALL)
    assert enc.num_prefix_tokens == prefix
    x = torch.randn(2, 3, 32, 32)
    out = enc(x)
    expected = 16 + (prefix if select == "cls_patch" else 0)
    assert enc.num_tokens == expected
    assert out.shape == (2, expected, 32) and out.dtype == torch.float32


def test_hf_feature_layer_is_penultimate_hidden_state():
    enc = tiny_vision(kind="clip", feature_layer=-2, select="cls_patch", **SMALL)
    x = torch.randn(1, 3, 32, 32)
    hidden = enc.model(pixel_values=x, output_hidden_states=True).hidden_states
    torch.testing.assert_close(enc(x), hidden[-2])
    last = tiny_vision(kind="clip", feature_layer=-1, **SMALL)
    last.load_state_dict(enc.state_dict())
    assert not torch.allclose(last(x), enc(x)[:, 1:])


def test_timm_feature_layer_matches_block_output():
    enc = tiny_vision(kind="timm", feature_layer=-2, select="cls_patch", **SMALL)
    x = torch.randn(1, 3, 32, 32)
    inter = enc.model.forward_intermediates(
        x, indices=[1], return_prefix_tokens=True, norm=False, output_fmt="NLC", intermediates_only=True
    )
    patches, prefix = inter[0]
    torch.testing.assert_close(enc(x), torch.cat([prefix, patches], dim=1))


def test_frozen_encoder_has_no_trainable_parameters():
    enc = tiny_vision(frozen=True, **SMALL)
    assert not any(p.requires_grad for p in enc.parameters())


def test_timm_local_weights_round_trip(tmp_path):
    enc = tiny_vision(kind="timm", **SMALL)
    enc.save(tmp_path / "vit")
    again = load_vision_encoder(tmp_path / "vit", VisionConfig(kind="timm", timm_model="x", feature_layer=-1))
    assert isinstance(again, TimmViT)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(again(x), enc(x))


@pytest.mark.parametrize("kind,n_linear", [("linear", 1), ("mlp2x_gelu", 2), ("mlp3x_gelu", 3)])
def test_projectors(kind, n_linear):
    proj = build_projector(kind, 32, 48)
    assert sum(isinstance(m, torch.nn.Linear) for m in proj) == n_linear
    assert proj(torch.randn(2, 5, 32)).shape == (2, 5, 48)


def test_unknown_projector_is_rejected():
    with pytest.raises(ValueError, match="unknown projector"):
        build_projector("mlp_relu", 4, 4)


@pytest.mark.parametrize("pool,per_frame", [(1, 16), (2, 4), (3, 4)])
def test_video_encoder_pooling(pool, per_frame):
    enc = tiny_vision(**SMALL)
    video = VideoEncoder(enc, num_frames=3, pool=pool)
    out = video(torch.randn(2, 3, 3, 32, 32))
    assert video.tokens_per_frame == per_frame
    assert out.shape == (2, 3 * per_frame, 32)


def test_video_encoder_pool1_equals_per_frame_encoding():
    enc = tiny_vision(**SMALL).eval()
    video = VideoEncoder(enc, num_frames=2)
    clip = torch.randn(1, 2, 3, 32, 32)
    expected = torch.cat([enc(clip[:, 0]), enc(clip[:, 1])], dim=1)
    torch.testing.assert_close(video(clip), expected)


def test_lmm_forward_mixed_batch_and_media_positions(tiny_model, tokenizer):
    proc = MultimodalProcessor.for_model(tiny_model, tokenizer)
    img = {"role": "user", "content": "<image>\nWhat is it?"}
    vid = {"role": "user", "content": "<video>\nHow does it move?"}
    txt = {"role": "user", "content": "Is there a star?"}
    ans = {"role": "assistant", "content": "A red circle."}
    feats = []
    for msg, ni, nv in [(img, 1, 0), (vid, 0, 1), (txt, 0, 0)]:
        ids, labels = proc.tokenize_conversation([msg, ans], ni, nv, "s")
        feats.append(
            {
                "input_ids": ids,
                "labels": labels,
                "images": torch.randn(ni, 3, 32, 32) if ni else None,
                "videos": torch.randn(nv, 3, 3, 32, 32) if nv else None,
            }
        )
    batch = proc.collate(feats)
    assert batch["images"].shape == (1, 3, 32, 32) and batch["videos"].shape == (1, 3, 3, 32, 32)
    assert int((batch["input_ids"] == tiny_model.cfg.image_token_id).sum()) == 16
    assert int((batch["input_ids"] == tiny_model.cfg.video_token_id).sum()) == 48
    out = tiny_model(
        batch["input_ids"],
        batch["attention_mask"],
        images=batch["images"],
        videos=batch["videos"],
        labels=batch["labels"],
    )
    assert out["logits"].shape == (*batch["input_ids"].shape, len(tokenizer))
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    # The image features really land in the image slots: different pixels → different logits there.
    other = tiny_model(
        batch["input_ids"], batch["attention_mask"], images=batch["images"] + 1.0, videos=batch["videos"]
    )
    assert not torch.allclose(other["logits"][0], out["logits"][0])
    torch.testing.assert_close(other["logits"][2], out["logits"][2])


def test_placeholder_count_mismatch_names_the_sample(tiny_model, tokenizer):
    proc = MultimodalProcessor.for_model(tiny_model, tokenizer)
    msgs = [
        {"role": "user", "content": "<image>\n<image>\nCompare."},
        {"role": "assistant", "content": "Same."},
    ]
    with pytest.raises(ValueError, match="sample rec-42: the text has 2 <image>"):
        proc.tokenize_conversation(msgs, 1, 0, "rec-42")


def test_forward_with_too_few_images_raises(tiny_model, tokenizer):
    proc = MultimodalProcessor.for_model(tiny_model, tokenizer)
    ids, _ = proc.tokenize_conversation(
        [{"role": "user", "content": "<image>\nHi"}, {"role": "assistant", "content": "Hi"}], 1, 0, "s"
    )
    with pytest.raises(ValueError, match="16 image placeholder slots"):
        tiny_model(torch.tensor([ids]))


def test_loss_reductions_by_hand():
    logits = torch.zeros(2, 4, 3)
    logits[0, 0, 1] = 2.0  # example 0 has 1 target, example 1 has 2
    labels = torch.tensor([[-100, 1, -100, -100], [-100, 0, 2, -100]])
    nll_a = torch.log(torch.exp(torch.tensor(2.0)) + 2) - 2.0
    nll_u = torch.log(torch.tensor(3.0))
    token = causal_lm_loss(logits, labels, "token")
    example = causal_lm_loss(logits, labels, "example")
    torch.testing.assert_close(token, (nll_a + 2 * nll_u) / 3)
    torch.testing.assert_close(example, (nll_a + nll_u) / 2)


def _prompt_batch(proc, prompts):
    feats = []
    for text, n_img in prompts:
        ids = proc.tokenize_prompt([{"role": "user", "content": text}], n_img, 0, "p")
        feats.append(
            {
                "input_ids": ids,
                "images": torch.randn(n_img, 3, 32, 32, generator=torch.Generator().manual_seed(len(ids)))
                if n_img
                else None,
            }
        )
    return feats


def test_batched_greedy_generation_equals_one_by_one(tiny_model, tokenizer):
    proc = MultimodalProcessor.for_model(tiny_model, tokenizer)
    feats = _prompt_batch(
        proc,
        [
            ("<image>\nDescribe the image.", 1),
            ("Is there a star?", 0),
            ("<image>\nHow many objects are there in the image?", 1),
        ],
    )
    batch = proc.collate(feats, padding_side="left")
    kw = {"max_new_tokens": 6, "eos_token_id": None, "pad_token_id": tokenizer.pad_token_id}
    together = tiny_model.generate(batch["input_ids"], batch["attention_mask"], images=batch["images"], **kw)
    assert together.shape == (3, 6)
    for row, f in enumerate(feats):
        single = proc.collate([f], padding_side="left")
        alone = tiny_model.generate(
            single["input_ids"], single["attention_mask"], images=single["images"], **kw
        )
        assert alone[0].tolist() == together[row].tolist()


def test_kv_cached_greedy_equals_full_recompute(tiny_model, tokenizer):
    proc = MultimodalProcessor.for_model(tiny_model, tokenizer)
    feat = _prompt_batch(proc, [("<image>\nDescribe the image.", 1)])[0]
    batch = proc.collate([feat], padding_side="left")
    gen = tiny_model.generate(
        batch["input_ids"],
        batch["attention_mask"],
        images=batch["images"],
        max_new_tokens=5,
        eos_token_id=None,
        pad_token_id=0,
    )
    ids = batch["input_ids"]
    with torch.no_grad():
        for step in range(5):
            logits = tiny_model(ids, images=batch["images"])["logits"]
            nxt = logits[0, -1].argmax()
            assert int(nxt) == int(gen[0, step])
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)


def test_sampling_is_seeded_and_differs_from_greedy(tiny_model, tokenizer):
    proc = MultimodalProcessor.for_model(tiny_model, tokenizer)
    batch = proc.collate(_prompt_batch(proc, [("<image>\nDescribe the image.", 1)] * 4), padding_side="left")
    kw = {"max_new_tokens": 8, "eos_token_id": None, "pad_token_id": 0, "do_sample": True, "temperature": 5.0}
    torch.manual_seed(1)
    a = tiny_model.generate(batch["input_ids"], batch["attention_mask"], images=batch["images"], **kw)
    torch.manual_seed(1)
    b = tiny_model.generate(batch["input_ids"], batch["attention_mask"], images=batch["images"], **kw)
    assert a.tolist() == b.tolist()
    assert len({tuple(r) for r in a.tolist()}) > 1  # 4 identical prompts, different samples


def test_generate_rejects_right_padding(tiny_model, tokenizer):
    proc = MultimodalProcessor.for_model(tiny_model, tokenizer)
    batch = proc.collate(
        _prompt_batch(proc, [("Hi", 0), ("Is there a star in the image?", 0)]), padding_side="right"
    )
    with pytest.raises(ValueError, match="left-padded"):
        tiny_model.generate(batch["input_ids"], batch["attention_mask"])


def test_video_temporal_codes_tell_frames_apart():
    enc = tiny_vision(**SMALL).eval()
    plain = VideoEncoder(enc, num_frames=3)
    timed = VideoEncoder(enc, num_frames=3, temporal="sinusoid")
    frame = torch.randn(1, 1, 3, 32, 32)
    clip = frame.expand(1, 3, 3, 32, 32)  # the same picture three times
    with torch.no_grad():
        same, coded = plain(clip).view(3, 16, 32), timed(clip).view(3, 16, 32)
    torch.testing.assert_close(same[0], same[2])
    assert (coded[0] - coded[2]).abs().max() > 0.1  # frame order is now in the features
    # Frame t's tokens carry code t, scaled to each token's RMS (code RMS = token RMS).
    rms = same.pow(2).mean(-1, keepdim=True).sqrt() * 2**0.5
    torch.testing.assert_close(coded, same + sinusoid_codes(3, 32)[:, None] * rms)
    torch.testing.assert_close(
        (sinusoid_codes(3, 32)[:, None] * rms).pow(2).mean(-1).sqrt(), rms[..., 0] / 2**0.5
    )
    with pytest.raises(ValueError, match="temporal"):
        VideoEncoder(enc, num_frames=3, temporal="learned")


def test_grid_codes_and_rms_scaling():
    codes = grid_codes(3, 32)
    assert codes.shape == (9, 32)
    # Row code in the first half, column code in the second, row-major patches.
    torch.testing.assert_close(codes[4, :16], sinusoid_codes(3, 16)[1])
    torch.testing.assert_close(codes[5, 16:], sinusoid_codes(3, 16)[2])
    assert len({tuple(c.tolist()) for c in codes}) == 9
    feats = torch.randn(2, 9, 32) * 5
    coded = add_code(feats, codes)
    added_rms = (coded - feats).pow(2).mean(-1).sqrt()
    torch.testing.assert_close(added_rms, feats.pow(2).mean(-1).sqrt())


def test_image_spatial_code_is_added_to_patch_tokens_only_when_configured(tokenizer):
    plain = tiny_lmm(tokenizer, tiny_vision(**SMALL), video_frames=2).eval()
    coded = tiny_lmm(tokenizer, tiny_vision(**SMALL), video_frames=2, image_spatial="sinusoid").eval()
    coded.load_state_dict(plain.state_dict())
    img, vid = torch.randn(2, 3, 32, 32), torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        raw = plain.vision(img)
        torch.testing.assert_close(plain.encode_pixels(img), raw)
        torch.testing.assert_close(coded.encode_pixels(img), add_code(raw, grid_codes(4, raw.shape[-1])))
        # Video frames get it too (frame by frame, before the projector).
        frames = coded.encode_pixels(vid.flatten(0, 1))
        torch.testing.assert_close(
            coded.encode_videos(vid), coded.projector(frames.reshape(1, -1, raw.shape[-1]))
        )
    with pytest.raises(ValueError, match="image_spatial"):
        LMMConfig(image_spatial="learned")


def test_checkpoint_round_trip_keeps_the_codes(tokenizer, tmp_path):
    model = tiny_lmm(
        tokenizer, tiny_vision(**SMALL), video_frames=2, video_temporal="sinusoid", image_spatial="sinusoid"
    )
    save_lmm(model, tokenizer, tmp_path / "ckpt")
    loaded, _ = load_lmm(tmp_path / "ckpt")
    assert loaded.cfg.video_temporal == "sinusoid" and loaded._video.temporal == "sinusoid"
    assert loaded.cfg.image_spatial == "sinusoid"
    vid = torch.randn(1, 2, 3, 32, 32)
    ids = torch.tensor([[1] + [model.cfg.video_token_id] * model.video_tokens + [10, 11]])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, videos=vid)["logits"], model(ids, videos=vid)["logits"])


def test_checkpoint_round_trip(tiny_model, tokenizer, tmp_path):
    save_lmm(tiny_model, tokenizer, tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {
        "mmalign.json",
        "vision",
        "projector.safetensors",
        "llm",
        "tokenizer",
    }
    model, tok = load_lmm(tmp_path / "ckpt")
    assert model.cfg == tiny_model.cfg
    assert tok.convert_tokens_to_ids("<image>") == model.cfg.image_token_id
    ids = torch.tensor([[1] + [model.cfg.image_token_id] * 16 + [10, 11, 12]])
    img = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, images=img)["logits"], tiny_model(ids, images=img)["logits"])
    # Overwriting an existing checkpoint directory replaces it whole.
    save_lmm(model, tok, tmp_path / "ckpt")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_load_rejects_a_foreign_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an mmalign checkpoint"):
        load_lmm(tmp_path)


def _plain_tokenizer():
    """A tokenizer as an LLM checkpoint ships it: no <image>/<video> tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import CORPUS

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def test_build_from_local_component_checkpoints(tmp_path):
    """The real-checkpoint path: a CLIP folder + a causal-LM folder, as downloaded from a hub."""
    from transformers import AutoModelForCausalLM, CLIPImageProcessor

    from mmalign.models.builders import tiny_llm_config

    vision = tiny_vision(kind="clip", **SMALL)
    vision.save(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path / "clip"
    )
    plain = _plain_tokenizer()
    assert "<image>" not in plain.get_vocab()
    llm = AutoModelForCausalLM.from_config(tiny_llm_config(len(plain), 48, 2, 4, 96))
    llm.save_pretrained(tmp_path / "llm")
    plain.save_pretrained(tmp_path / "llm")
    model, tok = build_lmm(tmp_path / "clip", tmp_path / "llm", LMMConfig(template="vicuna_v1"))
    assert model.cfg.image_processor.size == 32
    assert model.cfg.vision.feature_layer == -2 and model.image_tokens == 16
    assert not any(p.requires_grad for p in model.vision.parameters())
    # The media tokens were added and the embedding matrix grew to hold them.
    assert len(tok) == len(plain) + 2
    assert model.llm.get_input_embeddings().weight.shape[0] == len(tok)
    assert tok.convert_tokens_to_ids("<image>") == model.cfg.image_token_id
    proc = MultimodalProcessor.for_model(model, tok)
    ids, labels = proc.tokenize_conversation(
        [{"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": "A circle."}],
        1,
        0,
        "s",
    )
    assert ids.count(model.cfg.image_token_id) == 16
    out = model(torch.tensor([ids]), images=torch.randn(1, 3, 32, 32), labels=torch.tensor([labels]))
    assert torch.isfinite(out["loss"])


def test_tiny_lmm_is_seeded(tokenizer):
    vision_a = tiny_vision(**SMALL)
    a = tiny_lmm(
        tokenizer, vision_a, llm_hidden_size=48, llm_layers=1, llm_heads=4, llm_intermediate_size=96, seed=3
    )
    b = tiny_lmm(
        tokenizer, vision_a, llm_hidden_size=48, llm_layers=1, llm_heads=4, llm_intermediate_size=96, seed=3
    )
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), na
    state = torch.random.get_rng_state()
    tiny_lmm(
        tokenizer, vision_a, llm_hidden_size=48, llm_layers=1, llm_heads=4, llm_intermediate_size=96, seed=4
    )
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched


def test_always_run_media_runs_encoder_on_text_only_batches_without_changing_outputs(tiny_model):
    ids = torch.tensor([[20, 21, 22, 23]])
    calls = []
    hook = tiny_model.vision.register_forward_hook(lambda *a: calls.append(1))
    plain = tiny_model(ids)["logits"]
    assert calls == []
    tiny_model.always_run_media = True
    out = tiny_model(ids, labels=ids)
    hook.remove()
    assert calls == [1]
    torch.testing.assert_close(out["logits"], plain)
    out["loss"].backward()  # the projector is in the graph, with zero gradient
    assert all(
        p.grad is not None and float(p.grad.abs().sum()) == 0.0 for p in tiny_model.projector.parameters()
    )
    # Slots without media are still an error, blank image or not.
    with pytest.raises(ValueError, match="image placeholder slots"):
        tiny_model(torch.tensor([[tiny_model.cfg.image_token_id] * 16]))


def test_images_and_videos_share_one_encoder_call(tiny_model):
    calls = []
    hook = tiny_model.vision.register_forward_hook(lambda *a: calls.append(a[1][0].shape[0]))
    ids = torch.tensor([[tiny_model.cfg.image_token_id] * 16 + [tiny_model.cfg.video_token_id] * 48 + [20]])
    images, videos = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 3, 32, 32)
    both = tiny_model.embed(ids, images, videos)
    hook.remove()
    assert calls == [4]  # 1 image + 3 frames in one call
    torch.testing.assert_close(both[0, :16], tiny_model.encode_images(images)[0])
    torch.testing.assert_close(both[0, 16:64], tiny_model.encode_videos(videos)[0])


def test_wrong_frame_count_is_an_error(tiny_model):
    ids = torch.tensor([[tiny_model.cfg.video_token_id] * tiny_model.video_tokens])
    with pytest.raises(ValueError, match="videos have 4 frames, the model expects 3"):
        tiny_model(ids, videos=torch.randn(1, 4, 3, 32, 32))


def test_bf16_checkpoint_loads_without_dtype(tiny_model, tokenizer, tmp_path):
    tiny_model.to(torch.bfloat16)
    save_lmm(tiny_model, tokenizer, tmp_path / "bf16")
    model, _ = load_lmm(tmp_path / "bf16")  # no dtype: every part comes back bf16, projector included
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ids = torch.tensor([[model.cfg.image_token_id] * 16 + [20]])
    assert model(ids, images=torch.randn(1, 3, 32, 32))["logits"].dtype == torch.bfloat16


def test_frozen_tower_stays_in_eval_mode(tiny_model):
    tiny_model.cfg.vision.frozen = True
    tiny_model.train()
    assert tiny_model.llm.training and not tiny_model.vision.training
    tiny_model.cfg.vision.frozen = False
    tiny_model.train()
    assert tiny_model.vision.training


def test_checkpoint_folder_permissions_follow_umask(tiny_model, tokenizer, tmp_path):
    import os

    old = os.umask(0o022)
    try:
        save_lmm(tiny_model, tokenizer, tmp_path / "perm")
    finally:
        os.umask(old)
    assert (tmp_path / "perm").stat().st_mode & 0o777 == 0o755


def test_failed_save_keeps_the_previous_checkpoint(tiny_model, tokenizer, tmp_path):
    save_lmm(tiny_model, tokenizer, tmp_path / "c")

    class Broken:
        def save_pretrained(self, path):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_lmm(tiny_model, Broken(), tmp_path / "c")
    model, _ = load_lmm(tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    assert model.cfg == tiny_model.cfg
