"""Videos as folders of extracted frames (LLaVA-Hound's release): natural name order, sampling over
the whole clip, the same frames as the mp4 they came from, clear errors, the load-time check, and
everything above the loader (processor, video QA records, chat server and terminal chat) taking a
folder."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmalign.data.check import DataCheckError, MediaChecker, check_dataset
from mmalign.data.datasets import DataSource
from mmalign.data.formats import Example
from mmalign.data.media import MediaError, frame_files, load_video_frames, natural_key
from tests.test_data import write_mp4
from tests.test_media import _code_frame, _read_code


def _index_frame(k: int) -> Image.Image:
    """A 16×8 frame whose pixels hold ``k`` exactly (red = k mod 256, green = k div 256); PNG is lossless."""
    arr = np.zeros((8, 16, 3), np.uint8)
    arr[..., 0], arr[..., 1] = k % 256, k // 256
    return Image.fromarray(arr)


def _index_of(frame: Image.Image) -> int:
    r, g, _ = np.asarray(frame)[4, 8]
    return int(r) + 256 * int(g)


def _frame_folder(folder: Path, n: int, name: str = "frame_{k}.png") -> Path:
    folder.mkdir(parents=True)
    for k in range(n):
        _index_frame(k).save(folder / name.format(k=k))
    return folder


def test_frames_are_ordered_by_natural_name(tmp_path) -> None:
    folder = _frame_folder(tmp_path / "clip", 12)  # frame_0 … frame_11, not zero-padded
    (folder / ".DS_Store").write_bytes(b"\x00\x00")  # hidden files are not frames
    (folder / "sub").mkdir()
    names = [p.name for p in frame_files(folder)]
    assert names[:4] == ["frame_0.png", "frame_1.png", "frame_2.png", "frame_3.png"] and len(names) == 12
    assert names.index("frame_2.png") < names.index("frame_10.png")  # plain string order puts 10 first
    assert [_index_of(f) for f in load_video_frames(folder, 12)] == list(range(12))
    assert sorted(["b10.JPG", "b2.jpg", "a100.png", "b02.jpg"], key=natural_key) == [
        "a100.png",
        "b02.jpg",  # equal numbers: the plain name decides
        "b2.jpg",
        "b10.JPG",
    ]


def test_a_long_clip_is_sampled_over_all_its_frames(tmp_path) -> None:
    folder = _frame_folder(tmp_path / "long", 300, "{k:05d}.png")
    got = [_index_of(f) for f in load_video_frames(folder, 8)]
    # centres of 8 equal segments of 300 frames; at any frame rate ≥ 4/s the first 10 s hold ≤ 40
    assert got == [int((i + 0.5) * 300 / 8) for i in range(8)] == [18, 56, 93, 131, 168, 206, 243, 281]
    # fps mode with the extraction rate: one frame each 2 s of a 75 s clip extracted at 4 frames/s
    assert [_index_of(f) for f in load_video_frames(folder, 4, fps=0.5, frames_fps=4)] == [0, 8, 16, 24]
    # fps mode without a rate: a folder has none, so it is sampled uniformly (and says so)
    with pytest.warns(UserWarning, match="no frame rate"):
        assert [_index_of(f) for f in load_video_frames(folder, 8, fps=1)] == got
    few = load_video_frames(_frame_folder(tmp_path / "three", 3), 7)  # fewer frames than T: repeats
    assert [_index_of(f) for f in few] == [0, 0, 1, 1, 1, 2, 2]


def test_frames_go_through_the_image_normalisation(tmp_path) -> None:
    folder = tmp_path / "grey"
    folder.mkdir()
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(folder / "f1.png")  # 16-bit grey → white RGB
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.save(folder / "f2.png")
    a, b = load_video_frames(folder, 2)
    assert a.mode == "RGB" and np.asarray(a).min() == 255
    assert b.mode == "RGBA"  # composited by process_image onto its mode's background, as an image is


def test_empty_folder_and_non_image_files_are_clear_errors(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(MediaError, match=r"video frame folder .*empty holds no frame"):
        load_video_frames(tmp_path / "empty", 4)
    mixed = _frame_folder(tmp_path / "mixed", 3)
    (mixed / "notes.txt").write_text("frame list")
    with pytest.raises(MediaError, match=r"mixed holds 1 file\(s\) that are not images \(notes.txt\)"):
        load_video_frames(mixed, 2)
    broken = _frame_folder(tmp_path / "broken", 3)
    (broken / "frame_1.png").write_text("not a png")
    with pytest.raises(MediaError, match=r"cannot read image .*broken/frame_1.png"):
        load_video_frames(broken, 3)
    with pytest.raises(MediaError, match="video file not found"):
        load_video_frames(tmp_path / "nowhere", 3)


def test_mp4_and_its_extracted_frames_give_the_same_frames(tmp_path) -> None:
    import decord

    write_mp4(tmp_path / "clip.mp4", [_code_frame(k) for k in range(20)], fps=4)
    reader = decord.VideoReader(str(tmp_path / "clip.mp4"), ctx=decord.cpu(0), num_threads=1)
    folder = tmp_path / "clip"
    folder.mkdir()
    for k, arr in enumerate(reader.get_batch(list(range(len(reader)))).asnumpy()):
        Image.fromarray(arr).save(folder / f"img_{k + 1}.png")  # 1-based, unpadded: natural order matters
    for num, fps in ((5, None), (8, None), (25, None), (6, 1.5)):
        from_file = load_video_frames(tmp_path / "clip.mp4", num, fps)
        from_folder = load_video_frames(folder, num, fps, frames_fps=4)
        assert [_read_code(f) for f in from_file] == [_read_code(f) for f in from_folder]
        for a, b in zip(from_file, from_folder, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [_read_code(f) for f in load_video_frames(folder, 5)] == [2, 6, 10, 14, 18]


def _record(rid: str, video: str) -> dict:
    turns = [{"from": "human", "value": "<video>\nWhat moves?"}, {"from": "gpt", "value": "A square."}]
    return {"id": rid, "video": video, "conversations": turns}


def test_load_time_check_of_a_frame_folder_names_file_line_and_id(tmp_path) -> None:
    _frame_folder(tmp_path / "good", 3)
    (tmp_path / "empty").mkdir()
    _frame_folder(tmp_path / "mixed", 2)
    (tmp_path / "mixed" / "list.csv").write_text("a,b")
    _frame_folder(tmp_path / "fake", 0)
    (tmp_path / "fake" / "0001.jpg").write_text("no jpeg")
    recs = [_record("ok", "good"), _record("e", "empty"), _record("m", "mixed"), _record("f", "fake")]
    recs.append(_record("gone", "missing_dir"))
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    examples = DataSource(str(path)).load()
    with pytest.raises(DataCheckError) as err:
        check_dataset(examples, None)
    msg = str(err.value)
    assert f"[media_unreadable] {path}:2 (id e)" in msg and "holds no frame" in msg
    assert f"[media_unreadable] {path}:3 (id m)" in msg and "(list.csv)" in msg
    assert f"[media_unreadable] {path}:4 (id f)" in msg and "0001.jpg cannot be read" in msg
    assert f"[media_missing] {path}:5 (id gone)" in msg and "4 of 5 records rejected" in msg
    kept, report = check_dataset(examples, None, policy="skip_invalid")
    assert [e.id for e in kept] == ["ok"]
    assert report.counts() == {"media_unreadable": 3, "media_missing": 1}
    assert MediaChecker(headers=False)(tmp_path / "fake", "video") is None  # listing only: no header read
    assert MediaChecker()(tmp_path / "good", "image")[0] == "media_missing"  # an image is never a folder


def test_processor_and_video_qa_records_take_frame_folders(tmp_path, tiny_model, tokenizer) -> None:
    from mmalign.data.processor import MultimodalProcessor
    from mmalign.eval.video_qa import load_video_qa

    folder = _frame_folder(tmp_path / "videos" / "v_abc-Scene-001", 30)
    proc = MultimodalProcessor.for_model(tiny_model, tokenizer)
    ex = Example("x", [{"role": "user", "content": "<video>\nQ?"}], videos=[folder])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the tiny model samples uniformly: no fallback warning
        images, videos = proc.load_media(ex)
    t, size = tiny_model.cfg.video_frames, tiny_model.cfg.image_processor.size
    assert images is None and videos.shape == (1, t, 3, size, size)
    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps([{"id": "q1", "video": "v_abc-Scene-001", "question": "Q?", "answer": "a"}]))
    assert load_video_qa(qa, tmp_path / "videos")[0]["video_path"] == str(folder)  # no ".mp4" added


def test_chat_server_takes_a_frame_folder_under_its_media_root(tmp_path, tiny_model, tokenizer) -> None:
    from mmalign.data.media import process_video
    from mmalign.serve.engine import ChatEngine
    from mmalign.serve.protocol import RequestError, ServeLimits, parse_chat_request

    root = tmp_path / "media"
    folder = _frame_folder(root / "clips" / "c1", 10)
    (root / "empty").mkdir()
    _frame_folder(root / "huge", 1)
    Image.new("1", (5000, 4000)).save(root / "huge" / "frame_1.png")  # past max_image_pixels 4096²
    _frame_folder(tmp_path / "outside", 2)
    engine = ChatEngine(tiny_model, tokenizer, "tiny")
    limits = ServeLimits(media_root=root)

    def request(url: str) -> dict:
        part = {"type": "video_url", "video_url": {"url": url}}
        return {"messages": [{"role": "user", "content": [part, {"type": "text", "text": "What happens?"}]}]}

    req = parse_chat_request(request("clips/c1"), engine.placeholders, limits)
    assert req.videos == [folder.resolve()]
    prep = engine.prepare(req)
    want = process_video(
        load_video_frames(folder, tiny_model.cfg.video_frames), tiny_model.cfg.image_processor
    )
    assert torch.equal(prep.videos[0].float(), want)
    assert parse_chat_request(request(f"file://{folder}"), engine.placeholders, limits).videos == [
        folder.resolve()
    ]
    for url, status, match in (
        ("empty", 415, "holds no frame"),
        ("huge", 413, "frame frame_1.png: image of 5000×4000 exceeds"),
        (str(tmp_path / "outside"), 403, "outside the allowed media root"),
    ):
        with pytest.raises(RequestError, match=match) as err:
            parse_chat_request(request(url), engine.placeholders, limits)
        assert err.value.status == status
    with pytest.raises(RequestError, match="local file paths are disabled"):
        parse_chat_request(request(str(folder)), engine.placeholders, ServeLimits())


def test_terminal_chat_attaches_a_frame_folder(tmp_path, make_tokenizer, capsys) -> None:
    import importlib.util

    from tests.serve_helpers import save_tiny_checkpoint

    ckpt = save_tiny_checkpoint(make_tokenizer(), tmp_path / "tiny")
    folder = _frame_folder(tmp_path / "frames" / "clip", 5)
    spec = importlib.util.spec_from_file_location("eval_chat", Path(__file__).parents[1] / "eval" / "chat.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    args = [
        "chat",
        "--model",
        str(ckpt),
        "--video",
        str(folder),
        "--prompt",
        "What happens?",
        "--max-new-tokens",
        "4",
    ]
    assert cli.main(args) == 0
    assert "error" not in capsys.readouterr().err
    assert cli.main(["chat", "--model", str(ckpt), "--video", str(tmp_path / "nope"), "--prompt", "x"]) == 2
