"""Load-time record checks (mmalign/data/check.py): each kind on a real file (JSON list and JSONL),
naming file:line and id; truncation skips counted, strict, all-skipped; identical pairs; LRV
records for SFT; `python -m mmalign.data check`; builders write only records the trainers accept."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mmalign.data.check import DataCheckError, check_dataset, check_record
from mmalign.data.datasets import DataSource
from mmalign.data.formats import Example, RecordError, iter_json_records, load_records
from mmalign.data.processor import MultimodalProcessor
from mmalign.preference.formats import load_preferences

ROOT = Path(__file__).resolve().parents[1]


def conv(question: str, answer: str | None) -> list[dict]:
    turns = [{"from": "human", "value": question}]
    return turns if answer is None else [*turns, {"from": "gpt", "value": answer}]


def good(rid: str) -> dict:
    return {"id": rid, "image": "a.png", "conversations": conv("<image>\nWhat colour?", "Red.")}


def write(path: Path, records: list, layout: str) -> dict[str, int]:
    """Write records as a pretty JSON list or JSONL; return each record's first line (by id)."""
    if layout == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return {r.get("id", r.get("image_id")): i + 1 for i, r in enumerate(records)}
    text = json.dumps(records, indent=2)
    path.write_text(text)
    lines, pos = {}, 0
    for r in records:  # each record starts at a line holding exactly "  {"
        key = f'"id": {json.dumps(r["id"])}' if "id" in r else f'"image_id": {json.dumps(r["image_id"])}'
        at = text.index(key, pos)
        start = text.rindex("\n  {", 0, at) + 1
        lines[r.get("id", r.get("image_id"))] = text.count("\n", 0, start) + 1
        pos = at
    return lines


@pytest.fixture()
def media(tmp_path) -> Path:
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    (tmp_path / "fake.png").write_text("not an image")
    (tmp_path / "fake.mp4").write_text("<html>not a video</html>")
    Image.new("1", (12_000, 1), 1).save(tmp_path / "strip.png")  # the loader's padded-size bound
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "WEBP")
    (tmp_path / "webp.mp4").write_bytes(buf.getvalue())  # RIFF, but not AVI
    (tmp_path / "g188.mp4").write_bytes(b"x" * 188 + b"G" + b"x" * 400)  # one 0x47 is no MPEG-TS
    from tests.test_media import _png_header

    (tmp_path / "bomb.png").write_bytes(_png_header(100_000, 100_000))  # Pillow's own bomb error
    return tmp_path


@pytest.fixture()
def proc(tiny_model, tokenizer) -> MultimodalProcessor:
    return MultimodalProcessor.for_model(tiny_model, tokenizer)


def test_records_are_located_by_the_line_they_start_on(tmp_path):
    recs = [good("a"), good("b"), good("c")]
    lines = write(tmp_path / "pretty.json", recs, "json")
    got = [w for w, _ in iter_json_records(tmp_path / "pretty.json")]
    assert got == [f"{tmp_path / 'pretty.json'}:{lines[k]}" for k in "abc"] and lines["b"] > lines["a"] + 3
    (tmp_path / "one.json").write_text(json.dumps(recs))  # one line: the column tells them apart
    text = (tmp_path / "one.json").read_text()
    cols = [text.index('{"id": "' + k) + 1 for k in "abc"]
    assert [w for w, _ in iter_json_records(tmp_path / "one.json")] == [
        f"{tmp_path / 'one.json'}:1:{c}" for c in cols
    ]
    (tmp_path / "wrap.json").write_text(
        '{"info": {"v": [1]},\n "annotations": [\n' + ",\n".join(map(json.dumps, recs)) + "]}"
    )
    assert [w.rsplit(":", 1)[1] for w, _ in iter_json_records(tmp_path / "wrap.json")] == ["3", "4", "5"]
    (tmp_path / "broken.json").write_text('[\n{"id": "a"},\n{"id": \n]')
    with pytest.raises(RecordError, match=r"broken.json:4: invalid JSON"):
        list(iter_json_records(tmp_path / "broken.json"))


BAD = {
    "placeholder_in_answer": {"image": "a.png", "conversations": conv("<image>\nQ?", "It is <image> red.")},
    "empty_answer": {"conversations": conv("Q?", "   ")},
    "missing_answer": {"conversations": conv("Q?", None)},
    "empty_string_answer": {"conversations": conv("Q?", "")},
    "roles": {"conversations": [{"from": "gpt", "value": "Hi"}, {"from": "human", "value": "Q?"}]},
    "unanswered_last_turn": {"conversations": [*conv("Q?", "A."), {"from": "human", "value": "And?"}]},
    "media_count": {"image": "a.png", "conversations": conv("<image>\n<image>\nQ?", "Red.")},
    "media_count_none": {"conversations": conv("<image>\nQ?", "Red.")},
    "media_missing": {"image": "gone.png", "conversations": conv("<image>\nQ?", "Red.")},
    "media_unreadable": {"image": "fake.png", "conversations": conv("<image>\nQ?", "Red.")},
    "video_unreadable": {"video": "fake.mp4", "conversations": conv("<video>\nQ?", "Red.")},
    "video_in_answer": {"conversations": conv("Q?", "A <video> of a star.")},
    "image_too_large": {"image": "strip.png", "conversations": conv("<image>\nQ?", "Red.")},
    "video_riff_not_avi": {"video": "webp.mp4", "conversations": conv("<video>\nQ?", "Red.")},
    "video_one_sync_byte": {"video": "g188.mp4", "conversations": conv("<video>\nQ?", "Red.")},
    "image_bomb": {"image": "bomb.png", "conversations": conv("<image>\nQ?", "Red.")},
}
REASON = {
    "missing_answer": "empty_answer",
    "unanswered_last_turn": "roles",
    "empty_string_answer": "empty_answer",
    "media_count_none": "media_count",
    "video_unreadable": "media_unreadable",
    "video_in_answer": "placeholder_in_answer",
    "image_too_large": "media_unreadable",
    "video_riff_not_avi": "media_unreadable",
    "video_one_sync_byte": "media_unreadable",
    "image_bomb": "media_unreadable",
}


@pytest.mark.parametrize("layout", ["json", "jsonl"])
@pytest.mark.parametrize("kind", sorted(BAD))
def test_each_bad_record_fails_at_load_with_file_line_and_id(media, proc, kind, layout):
    bad = {"id": f"bad-{kind}", **BAD[kind]}
    path = media / f"data.{layout}"
    lines = write(path, [good("g1"), bad, good("g2")], layout)
    examples = DataSource(str(path)).load()
    with pytest.raises(DataCheckError) as err:
        check_dataset(examples, proc, max_length=256)
    msg = str(err.value)
    assert f"{path}:{lines[bad['id']]} (id {bad['id']})" in msg
    assert f"[{REASON.get(kind, kind)}]" in msg and "1 of 3 records rejected" in msg
    # the same finding without a tokenizer (what the builders run), and skipped when asked
    kept, report = check_dataset(examples, None, policy="skip_invalid")
    assert [e.id for e in kept] == ["g1", "g2"] and report.counts() == {REASON.get(kind, kind): 1}


def test_truncation_without_targets_is_a_counted_skip_strict_errors_all_skipped_fails(media, proc):
    long_q = "Describe the shapes and their colours in great detail please. " * 8
    recs = [good("g1"), {"id": "long", "conversations": conv(long_q, "Red.")}, good("g2")]
    path = media / "trunc.jsonl"
    write(path, recs, "jsonl")
    examples = load_records(path)
    ids, _ = proc.tokenize_conversation(examples[1].messages, 0, 0, "long")
    assert len(ids) > 64
    kept, report = check_dataset(examples, proc, max_length=64)
    assert [e.id for e in kept] == ["g1", "g2"] and report.counts() == {"no_targets": 1}
    assert (
        f"skipped [no_targets] {path}:2 (id long)" in report.summary()
        and "2 kept, 1 skipped" in report.summary()
    )
    # untruncated, the same record trains
    assert check_dataset(examples, proc, max_length=1024)[1].counts() == {}
    with pytest.raises(DataCheckError, match=rf"\[no_targets\] {path}:2 \(id long\)"):
        check_dataset(examples, proc, max_length=64, policy="strict")
    with pytest.raises(DataCheckError, match="no record left to train on"):
        check_dataset([examples[1]], proc, max_length=64)
    # media after a long prompt: truncation would cut media tokens
    late = Example("late", [{"role": "user", "content": long_q + "<image>"}, {"role": "assistant", "content": "Red."}],
                   [media / "a.png"], where="f.json:9")  # fmt: skip
    assert check_dataset([late, examples[0]], proc, max_length=64)[1].issues[0].reason == "too_long"


def pair(rid: str, chosen: str, rejected: str) -> dict:
    q = conv("<image>\nDescribe the image.", None)
    return {
        "id": rid,
        "image": "a.png",
        "conversations": [*q, {"from": "gpt", "value": chosen}],
        "rejected_conversations": [*q, {"from": "gpt", "value": rejected}],
    }


@pytest.mark.parametrize("layout", ["json", "jsonl"])
def test_identical_pairs_given_and_after_truncation(media, proc, layout):
    shared = "There are 3 objects. A large red circle at the top left. A small blue star in the middle. "
    recs = [
        pair("ok", "Yes.", "No."),
        pair("same", "A red circle.", "  A red circle. "),
        pair("cut", shared + "The green triangle.", shared + "The yellow square."),
        pair("img", "Red <image>.", "Blue."),
    ]
    path = media / f"pairs.{layout}"
    lines = write(path, recs, layout)
    pairs = load_preferences(path)
    with pytest.raises(DataCheckError) as err:
        check_dataset(pairs, proc, max_length=60)
    msg = str(err.value)
    assert f"[identical_pair] {path}:{lines['same']} (id same)" in msg
    assert f"[placeholder_in_answer] {path}:{lines['img']} (id img)" in msg and "2 of 4" in msg
    kept, report = check_dataset(pairs, proc, max_length=60, policy="skip_invalid")
    assert [p.id for p in kept] == ["ok"]
    assert report.counts() == {
        "identical_after_truncation": 1,
        "identical_pair": 1,
        "placeholder_in_answer": 1,
    }
    kept, report = check_dataset(pairs[:3:2], proc, max_length=60)  # skip: the truncated tie is skipped
    assert [p.id for p in kept] == ["ok"] and f"{path}:{lines['cut']} (id cut)" in report.summary()
    assert check_dataset(pairs[:3:2], proc, max_length=512)[1].counts() == {}  # untruncated they differ


def test_lrv_records_load_for_sft(tmp_path, proc):
    images = tmp_path / "vg"
    images.mkdir()
    for i in ("2392588", "17"):
        Image.new("RGB", (32, 24), (0, 0, 255)).save(images / f"{i}.jpg")
    recs = [
        {"image_id": "2392588", "question": "Is there a teapot?", "answer": "There is no teapot.", "task": "negative"},
        {"image_id": 17, "question": "What colour is the image?", "answer": "Blue.", "task": "color"},
    ]  # fmt: skip
    (tmp_path / "filter_cap.json").write_text(json.dumps({"annotations": recs}))  # the released layout
    (tmp_path / "lrv.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    for name, fmt in (("filter_cap.json", "lrv"), ("filter_cap.json", "auto"), ("lrv.jsonl", "auto")):
        examples = DataSource(str(tmp_path / name), media_root=str(images), format=fmt).load()
        assert [e.images for e in examples] == [[images / "2392588.jpg"], [images / "17.jpg"]]
        assert examples[0].messages == [
            {"role": "user", "content": "<image>\nIs there a teapot?"},
            {"role": "assistant", "content": "There is no teapot."},
        ]
        assert examples[0].meta == {"image_id": "2392588", "task": "negative"} and examples[1].id == "17"
        kept, _ = check_dataset(examples, proc, 256, "strict")
        feats = proc.encode(kept[0], 256)
        assert feats["images"].shape[0] == 1 and any(lab != -100 for lab in feats["labels"])
    with pytest.raises(ValueError, match="format must be auto or one of"):
        DataSource("x.json", format="sharegpt")


def test_a_record_failing_mid_run_names_file_line_and_id(media, proc):
    write(
        media / "d.jsonl",
        [good("g1"), {"id": "gone", "image": "gone.png", "conversations": conv("<image>\nQ?", "A.")}],
        "jsonl",
    )
    examples = load_records(media / "d.jsonl")
    with pytest.raises(RecordError, match=rf"{media / 'd.jsonl'}:2 \(id gone\): .*gone.png"):
        proc.encode(examples[1])


def test_check_cli_on_a_good_and_a_bad_file(media, tiny_model, tokenizer):
    from mmalign.models.checkpoint import save_lmm

    save_lmm(tiny_model, tokenizer, media / "model")
    write(media / "good.json", [good("g1"), good("g2")], "json")
    lines = write(media / "bad.json", [good("g1"), {"id": "b", **BAD["placeholder_in_answer"]}], "json")
    cmd = [
        sys.executable,
        "-m",
        "mmalign.data",
        "check",
        "--model",
        str(media / "model"),
        "--max-length",
        "128",
    ]
    ok = subprocess.run(
        [*cmd, str(media / "good.json")], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    assert "2 records checked" in ok.stdout and "2 kept, 0 skipped" in ok.stdout and "tokenised" in ok.stdout
    bad = subprocess.run(
        [*cmd, str(media / "bad.json")], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert bad.returncode == 1
    assert f"[placeholder_in_answer] {media / 'bad.json'}:{lines['b']} (id b)" in bad.stderr


def test_check_cli_on_a_trainer_config(media, tiny_model, tokenizer, capsys):
    """--config: the trainer's own sources, model, max_length and data_checks (overrides apply)."""
    from mmalign.data.__main__ import main
    from mmalign.models.checkpoint import save_lmm

    save_lmm(tiny_model, tokenizer, media / "model")
    long_q = "Describe the shapes and their colours in great detail please. " * 8
    lines = write(
        media / "d.json", [good("g1"), {"id": "long", "conversations": conv(long_q, "Red.")}], "json"
    )
    cfg = media / "sft.yaml"
    cfg.write_text(
        json.dumps(
            {"model": str(media / "model"), "data": [{"path": str(media / "d.json")}], "max_length": 64}
        )
    )
    assert main(["check", "--config", str(cfg)]) == 0  # skip (default): the long record is a counted skip
    assert f"skipped [no_targets] {media / 'd.json'}:{lines['long']} (id long)" in capsys.readouterr().out
    assert main(["check", "--config", str(cfg), "data_checks=strict"]) == 1
    assert f"[no_targets] {media / 'd.json'}:{lines['long']} (id long)" in capsys.readouterr().err
    assert main(["check", "--config", str(cfg), "max_length=512"]) == 0
    assert "2 kept, 0 skipped" in capsys.readouterr().out


def test_builder_outputs_pass_the_trainers_checks(tmp_path):
    from mmalign.builders.io import read_jsonl
    from mmalign.builders.lrv import LRVBuilder, LRVOptions
    from mmalign.builders.povid import POVIDBuilder, POVIDOptions, load_scene_index, mine_stats
    from mmalign.builders.runner import run_builder
    from mmalign.shapeworld import WorldConfig, generate

    data = tmp_path / "sw"
    generate(data, n_images=16, n_videos=2, seed=5, cfg=WorldConfig(video_frames=4), progress=False)
    inp = data / "llava" / "train.json"
    records = json.loads(inp.read_text())
    image_rec = next(r for r in records if "image" in r)
    records += [  # the faults the POVID builder used to pass through
        {**image_rec, "id": "two-images", "conversations": conv("<image>\n<image>\nQ?", "A red star.")},
        {**image_rec, "id": "img-in-answer", "conversations": conv("<image>\nQ?", "A red <image> star.")},
    ]
    (data / "in.json").write_text(json.dumps(records, indent=1))
    scenes = load_scene_index([data / "scenes" / "train.jsonl"])
    builder = POVIDBuilder(
        POVIDOptions(all_kinds=True, media_root=str(data)), mine_stats([inp], scenes), scenes
    )
    summary = run_builder(builder, [data / "in.json"], tmp_path / "povid", {}, progress=False)
    errors = {e["id"]: e["reason"] for e in read_jsonl(tmp_path / "povid" / "errors.jsonl")}
    assert set(errors) == {"two-images", "img-in-answer"} and summary["errors"] == 2
    assert "[media_count]" in errors["two-images"] and "[placeholder_in_answer]" in errors["img-in-answer"]
    pairs = load_preferences(tmp_path / "povid" / "povid.jsonl", media_root=data)
    assert any(p.videos for p in pairs)  # video records keep their video
    kept, report = check_dataset(pairs, None, policy="strict")  # the trainers' checker, every record
    assert len(kept) == len(pairs) > 50 and report.issues == []

    lrv = LRVBuilder(LRVOptions(per_image=4, media_root=str(data), image_size=60))
    run_builder(lrv, [data / "scenes" / "train.jsonl"], tmp_path / "lrv", {}, progress=False)
    for name in ("lrv", "llava"):
        examples = load_records(tmp_path / "lrv" / f"{name}.jsonl", data)
        assert len(examples) > 20 and check_dataset(examples, None, policy="strict")[1].issues == []
    issue = check_record({"id": "x", "conversations": conv("Q?", "")}, "llava", "w")
    assert issue is not None and issue.reason == "empty_answer"


@pytest.mark.multiproc
def test_sft_refuses_a_bad_record_before_training_and_reports_skips(media, tiny_model, tokenizer):
    """`python train/sft.py` (one process): a bad record stops the run at load time — message with
    file:line and id, no checkpoint written; with only a truncation skip it trains and reports it."""
    from mmalign.models.checkpoint import save_lmm
    from tests.distributed import dist_env, write_sft_config

    save_lmm(tiny_model, tokenizer, media / "model")
    long_q = "Describe the shapes and their colours in great detail please. " * 8
    recs = [good("g1"), {"id": "long", "conversations": conv(long_q, "Red.")}, good("g2")]
    bad = {"id": "bad", "image": "a.png", "conversations": conv("<image>\nQ?", "It is <image> red.")}
    lines = write(media / "bad.json", [*recs, bad], "json")
    write(media / "ok.json", recs, "json")

    def sft(data: str, out: str) -> subprocess.CompletedProcess:
        cfg = write_sft_config(
            media / f"{out}.yaml",
            model=str(media / "model"),
            out=str(media / out),
            data=[{"path": str(media / data)}],
            strategy={"zero_stage": 0, "micro_batch_size": 2},
            max_steps=1,
            max_length=64,
            log_every=1,
        )
        cmd = [sys.executable, str(ROOT / "train" / "sft.py"), "--config", str(cfg)]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dist_env(), timeout=300)

    failed = sft("bad.json", "run_bad")
    assert failed.returncode != 0
    assert f"[placeholder_in_answer] {media / 'bad.json'}:{lines['bad']} (id bad)" in failed.stderr
    assert not (media / "run_bad" / "checkpoints").exists() and not (media / "run_bad" / "final").exists()
    ran = sft("ok.json", "run_ok")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "3 records checked" in ran.stdout and "2 kept, 1 skipped; findings: no_targets 1" in ran.stdout
    assert f"skipped [no_targets] {media / 'ok.json'}:{lines['long']} (id long)" in ran.stdout
    assert (media / "run_ok" / "final").is_dir()


@pytest.mark.multiproc
def test_missing_image_and_identical_pair_stop_every_rank_at_load(media, tiny_model, tokenizer):
    """2 ranks (torchrun, gloo): a missing image (SFT) and an identical pair (DPO) stop both ranks
    at load time with the record's file:line and id — no rank reaches DeepSpeed or a collective."""
    from mmalign.models.checkpoint import save_lmm
    from tests.distributed import dist_env, torchrun_cmd, write_sft_config

    save_lmm(tiny_model, tokenizer, media / "model")
    gone = {"id": "gone", "image": "gone.png", "conversations": conv("<image>\nQ?", "Red.")}
    sft_lines = write(media / "sft.json", [good("g1"), good("g2"), gone], "json")
    dpo_lines = write(media / "pairs.json", [pair("ok", "Yes.", "No."), pair("tie", "A red circle.", "A red circle.")], "json")  # fmt: skip
    common = {
        "model": str(media / "model"),
        "strategy": {"zero_stage": 3, "micro_batch_size": 1},
        "max_steps": 1,
    }
    for script, data, rid, line, reason in (
        ("sft.py", "sft.json", "gone", sft_lines["gone"], "media_missing"),
        ("dpo.py", "pairs.json", "tie", dpo_lines["tie"], "identical_pair"),
    ):
        out = media / f"run_{script}"
        cfg = write_sft_config(
            media / f"{script}.yaml", out=str(out), data=[{"path": str(media / data)}], **common
        )
        proc = subprocess.run(
            torchrun_cmd(ROOT / "train" / script, ["--config", str(cfg)]),
            capture_output=True, text=True, cwd=ROOT, env=dist_env(), timeout=300,
        )  # fmt: skip
        assert proc.returncode != 0
        expected = f"[{reason}] {media / data}:{line} (id {rid})"
        assert proc.stderr.count(expected) >= 2, proc.stderr[-3000:]  # both ranks say it
        assert "Connection closed" not in proc.stderr and "ProcessGroupGloo" not in proc.stderr
        assert not (out / "checkpoints").exists() and not (out / "ref_cache").exists()
