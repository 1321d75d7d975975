"""Templates and label masks, LLaVA records, pixel processing, real mp4 decoding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmalign.data.formats import RecordError, load_llava
from mmalign.data.media import (
    ImageProcessorConfig,
    MediaError,
    expand_to_square,
    load_image,
    load_video_frames,
    process_image,
    sample_frame_indices,
)
from mmalign.data.processor import MultimodalProcessor
from mmalign.data.templates import BUILTIN_TEMPLATES, resolve_template

CONV = [
    {"role": "user", "content": "<image>\nWhat colour is the circle?"},
    {"role": "assistant", "content": "Red."},
    {"role": "user", "content": "How many objects are there?"},
    {"role": "assistant", "content": "3"},
]


def _targets(proc, tokenizer, messages, n_images=1):
    ids, labels = proc.tokenize_conversation(messages, n_images, 0, "t")
    assert len(ids) == len(labels)
    spans, cur = [], []
    for tok, lab in zip(ids, labels, strict=True):
        if lab != -100:
            assert lab == tok
            cur.append(tok)
        elif cur:
            spans.append(tokenizer.decode(cur))
            cur = []
    if cur:
        spans.append(tokenizer.decode(cur))
    return ids, spans


@pytest.mark.parametrize(
    "template,expected",
    [
        ("chatml", ["Red.<|im_end|>\n", "3<|im_end|>\n"]),
        ("vicuna_v1", [" Red.<|im_end|>", " 3<|im_end|>"]),  # eos of this tokenizer is <|im_end|>
        ("llama3", ["Red.<|eot_id|>", "3<|eot_id|>"]),
        ("plain", ["Red.<|im_end|>", "3<|im_end|>"]),  # no role markers: the answer follows the question
    ],
)
def test_labels_cover_exactly_the_assistant_turns(tiny_model, tokenizer, template, expected):
    tiny_model.cfg.template = template
    proc = MultimodalProcessor.for_model(tiny_model, tokenizer)
    ids, spans = _targets(proc, tokenizer, CONV)
    assert spans == expected
    assert ids.count(tiny_model.cfg.image_token_id) == tiny_model.image_tokens


def test_vicuna_v1_renders_like_llava(tokenizer):
    text = tokenizer.apply_chat_template(
        CONV[:2], chat_template=BUILTIN_TEMPLATES["vicuna_v1"], tokenize=False
    )
    assert text == (
        "<s>A chat between a curious human and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the human's questions. USER: <image>\nWhat colour is the "
        "circle? ASSISTANT: Red.<|im_end|>"
    )
    prompt = tokenizer.apply_chat_template(
        CONV[:1], chat_template=BUILTIN_TEMPLATES["vicuna_v1"], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("circle? ASSISTANT:")


def test_tokenizer_template_is_preferred(tokenizer):
    assert resolve_template(tokenizer) == tokenizer.chat_template == BUILTIN_TEMPLATES["chatml"]
    assert resolve_template(tokenizer, "llama3") == BUILTIN_TEMPLATES["llama3"]
    with pytest.raises(ValueError, match="unknown template"):
        resolve_template(tokenizer, "alpaca")


def test_bad_roles_are_rejected(tiny_model, tokenizer):
    proc = MultimodalProcessor.for_model(tiny_model, tokenizer)
    with pytest.raises(ValueError, match="sample x7: turn 1 is from 'user'"):
        proc.tokenize_conversation([CONV[0], CONV[2]], 1, 0, "x7")


def test_truncation_never_cuts_media(tiny_model, tokenizer):
    proc = MultimodalProcessor.for_model(tiny_model, tokenizer)
    ids, _ = proc.tokenize_conversation(CONV, 1, 0, "t")
    short, labels = proc.tokenize_conversation(CONV, 1, 0, "t", max_length=len(ids) - 3)
    assert short == ids[:-3] and len(labels) == len(short)
    late = [
        {"role": "user", "content": "Describe. " * 5 + "<image>"},
        {"role": "assistant", "content": "Red."},
    ]
    with pytest.raises(ValueError, match="would cut media tokens"):
        proc.tokenize_conversation(late, 1, 0, "t", max_length=20)


def test_llava_records_json_and_jsonl(tmp_path):
    recs = [
        {
            "id": "a",
            "image": "img/a.png",
            "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hello"}],
        },
        {
            "id": "b",
            "video": "vid/b.mp4",
            "conversations": [{"from": "human", "value": "<video>\nHi"}, {"from": "gpt", "value": "Hello"}],
        },
        {"id": "c", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    ]
    (tmp_path / "d.json").write_text(json.dumps(recs))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    for name in ("d.json", "d.jsonl"):
        ex = load_llava(tmp_path / name)
        assert [e.id for e in ex] == ["a", "b", "c"]
        assert ex[0].images == [tmp_path / "img/a.png"] and ex[0].videos == []
        assert ex[1].videos == [tmp_path / "vid/b.mp4"]
        assert ex[0].messages[1] == {"role": "assistant", "content": "Hello"}
    ex = load_llava(tmp_path / "d.json", media_root="/data")
    assert str(ex[0].images[0]) == "/data/img/a.png"


def test_malformed_llava_records_name_the_line(tmp_path):
    good = json.dumps({"id": "a", "conversations": [{"from": "human", "value": "Hi"}]})
    (tmp_path / "bad.jsonl").write_text(
        good + "\n" + json.dumps({"id": "z", "conversations": [{"from": "robot", "value": "x"}]}) + "\n"
    )
    with pytest.raises(RecordError, match=r"bad.jsonl:2 \(id z\): turn 0 has unknown speaker 'robot'"):
        load_llava(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text(good + "\n{not json\n")
    with pytest.raises(RecordError, match=r"broken.jsonl:2: invalid JSON"):
        load_llava(tmp_path / "broken.jsonl")
    (tmp_path / "noconv.json").write_text(json.dumps([{"id": "q"}]))
    with pytest.raises(RecordError, match=r"noconv.json:1 \(id q\): missing or empty 'conversations'"):
        load_llava(tmp_path / "noconv.json")


def test_pad_mode_pads_with_the_mean_colour():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    sq = expand_to_square(img, (10, 20, 30))
    assert sq.size == (40, 40)
    assert sq.getpixel((0, 0)) == (10, 20, 30) and sq.getpixel((20, 20)) == (255, 0, 0)
    cfg = ImageProcessorConfig(
        size=8, mode="pad", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resample="nearest"
    )
    x = process_image(img, cfg)
    assert x.shape == (3, 8, 8)
    # Top rows are padding = the mean colour (rounded to a byte) → ~0 after normalisation.
    torch.testing.assert_close(x[:, 0, :], torch.zeros(3, 8), atol=1.01 / 255, rtol=0)
    torch.testing.assert_close(x[:, 4, 4], torch.tensor([1.0, -1.0, -1.0]))
    resized = process_image(img, ImageProcessorConfig(size=8, mode="resize", mean=(0.5,) * 3, std=(0.5,) * 3))
    torch.testing.assert_close(resized[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))


def test_image_processor_from_hf_folder(tmp_path):
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(crop_size={"height": 224, "width": 224}, image_mean=[0.1, 0.2, 0.3]).save_pretrained(
        tmp_path
    )
    cfg = ImageProcessorConfig.from_hf(tmp_path)
    assert cfg.size == 224 and cfg.mean == (0.1, 0.2, 0.3) and cfg.mode == "pad"


def test_bad_image_files_raise_media_errors(tmp_path):
    with pytest.raises(MediaError, match="image file not found: .*missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(MediaError, match="cannot read image .*junk.png"):
        load_image(tmp_path / "junk.png")


def test_frame_indices():
    assert sample_frame_indices(100, 4) == [12, 37, 62, 87]
    assert sample_frame_indices(3, 5) == [0, 0, 1, 2, 2]  # centres 0.3 0.9 1.5 2.1 2.7: frames repeat
    assert sample_frame_indices(1, 3) == [0, 0, 0]
    assert sample_frame_indices(100, 4, avg_fps=30, fps=1) == [0, 30, 60, 90]
    assert sample_frame_indices(40, 4, avg_fps=30, fps=1) == [0, 30, 39, 39]


def write_mp4(path, frames: list[np.ndarray], fps: int = 4) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _moving_square(n: int, size: int = 32) -> list[np.ndarray]:
    frames = []
    for t in range(n):
        arr = np.zeros((size, size, 3), np.uint8)
        x = 2 + t * 3
        arr[12:20, x : x + 8] = (255, 255, 255)
        frames.append(arr)
    return frames


def test_real_mp4_to_frames_to_features(tmp_path, tiny_model):
    write_mp4(tmp_path / "clip.mp4", _moving_square(7))
    frames = load_video_frames(tmp_path / "clip.mp4", 3)
    assert len(frames) == 3 and frames[0].size == (32, 32)
    # Uniform sampling of 7 frames → indices 1, 3, 5: the white square sits at x = 5, 11, 17.
    for frame, x in zip(frames, (5, 11, 17), strict=True):
        arr = np.asarray(frame)
        assert arr[16, x + 4].mean() > 200 and arr[16, x - 2].mean() < 60
    short = load_video_frames(tmp_path / "clip.mp4", 10)  # longer than the clip: frames repeat
    assert len(short) == 10
    from mmalign.data.media import process_video

    pixels = process_video(frames, tiny_model.cfg.image_processor).unsqueeze(0)
    assert pixels.shape == (1, 3, 3, 32, 32)
    feats = tiny_model.encode_videos(pixels)
    assert feats.shape == (1, tiny_model.video_tokens, 48) and torch.isfinite(feats).all()


def test_bad_video_files_raise_media_errors(tmp_path):
    with pytest.raises(MediaError, match="video file not found"):
        load_video_frames(tmp_path / "none.mp4", 4)
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(MediaError, match="cannot decode video .*junk.mp4"):
        load_video_frames(tmp_path / "junk.mp4", 4)


def test_processor_encodes_a_video_record(tmp_path, tiny_model, tokenizer):
    write_mp4(tmp_path / "v.mp4", _moving_square(6))
    rec = {
        "id": "v1",
        "video": "v.mp4",
        "conversations": [
            {"from": "human", "value": "<video>\nWhere does it go?"},
            {"from": "gpt", "value": "Right."},
        ],
    }
    (tmp_path / "d.json").write_text(json.dumps([rec]))
    (example,) = load_llava(tmp_path / "d.json")
    proc = MultimodalProcessor.for_model(tiny_model, tokenizer)
    feat = proc.encode(example)
    assert feat["videos"].shape == (1, 3, 3, 32, 32) and feat["images"] is None
    assert feat["input_ids"].count(tiny_model.cfg.video_token_id) == tiny_model.video_tokens
    batch = proc.collate([feat])
    out = tiny_model(
        batch["input_ids"], batch["attention_mask"], videos=batch["videos"], labels=batch["labels"]
    )
    assert torch.isfinite(out["loss"])


def test_stop_ids_include_the_templates_end_of_turn(tiny_model, tokenizer):
    proc = MultimodalProcessor.for_model(tiny_model, tokenizer)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in proc.stop_token_ids
    assert tokenizer.eos_token_id in proc.stop_token_ids


def test_collate_refuses_a_mix_of_labelled_and_unlabelled_features(tiny_model, tokenizer):
    proc = MultimodalProcessor.for_model(tiny_model, tokenizer)
    with pytest.raises(ValueError, match="some features have labels"):
        proc.collate([{"input_ids": [20], "labels": [20]}, {"input_ids": [21], "labels": None}])


def test_generate_responses_restores_training_mode(tiny_model, tokenizer):
    from mmalign.data.formats import Example
    from mmalign.training.generation import generate_responses

    proc = MultimodalProcessor.for_model(tiny_model, tokenizer)
    tiny_model.train()
    out = generate_responses(
        tiny_model, proc, [Example("q", [{"role": "user", "content": "Is there a star?"}])], max_new_tokens=3
    )
    assert len(out) == 1 and isinstance(out[0], str)
    assert tiny_model.llm.training
