"""Video QA judge modes (mmalign/eval/video_qa.py): Video-ChatGPT's yes/no + 0–5 and LLaVA-Hound's
caption-grounded 1–5, judged by a real local OpenAI-compatible stub answering hand-written replies;
the judge's name on every result; captions required in hound mode; the eval/run.py flag."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmalign.data.formats import RecordError
from mmalign.eval import video_qa
from mmalign.llm.client import ChatClient, LLMConfig

ROOT = Path(__file__).resolve().parents[1]

# hand-written judge replies, chosen by the model's prediction that the judge prompt quotes
HOUND_REPLIES = {
    "pred-a": "Explanation: matches the reference.\nScore: 4",
    "pred-b": "score:5.",
    "pred-c": "Explanation: partly right.\nScore: 3/5",
    "pred-d": "Explanation: contradicts the caption.\n**Score:** 1",
    "pred-e": "The prediction is reasonable but I will not give a number.",
}
VCG_REPLIES = {
    "pred-a": "{'pred': 'yes', 'score': 4}",
    "pred-b": "{'pred': 'no', 'score': 1}",
    "pred-c": "Sure: {'pred': 'yes', 'score': 5}",
    "pred-d": "{'pred': 'no', 'score': 2}",
    "pred-e": "yes, 3",
}


class _Judge(BaseHTTPRequestHandler):
    replies: dict[str, str] = {}
    seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        prompt = body["messages"][-1]["content"]
        text = next((r for key, r in type(self).replies.items() if key in prompt), "no idea")
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def judge_server(replies: dict[str, str]) -> Iterator[str]:
    _Judge.replies, _Judge.seen = replies, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()


def _records(with_caption: bool = True) -> list[dict]:
    out = []
    for k in "abcde":
        r = {
            "id": f"q{k}",
            "question": f"What happens {k}?",
            "answer": f"answer {k}",
            "_where": f"qa.json:{k}",
        }
        if with_caption:
            r["caption"] = f"A man rides a bike ({k})."
        out.append(r)
    return out


def _client(url: str) -> ChatClient:
    return ChatClient(LLMConfig(url, "judge-7b", backoff=0.01, max_retries=0))


def test_hound_score_parsing() -> None:
    parse = video_qa.parse_hound_score
    assert parse("Score: 4") == {"pred": True, "score": 4, "explanation": ""}
    assert parse("score:5.")["score"] == 5 and parse("Score: 3/5")["score"] == 3
    assert parse("Explanation: off topic.\nScore: 2") == {
        "pred": False,
        "score": 2,
        "explanation": "off topic.",
    }
    assert parse("**Score:** 3")["pred"] is True and parse("Score = 2.5")["score"] == 2.5
    assert parse("Explanation: a score: 2 would be harsh.\nScore: 4")["score"] == 4  # the last one
    for bad in ("Looks right to me.", "Score: 0", "Score: 6", "Score: 8/10", "Score: N/A", ""):
        with pytest.raises(ValueError):
            parse(bad)


def test_hound_prompt_holds_caption_question_answer_prediction() -> None:
    rec = _records()[0]
    msgs = video_qa.judge_messages(rec, "pred-a", "hound")
    assert [m["role"] for m in msgs] == ["user"]  # one user turn, no system prompt, as Hound
    text = msgs[0]["content"]
    for part in (rec["caption"], rec["question"], rec["answer"], "pred-a"):
        assert part in text
    assert text.endswith(
        "Explanation: <brief judgement of prediction>\nScore: <an integer score of quality from 1-5>"
    )
    long = " ".join(f"w{i}" for i in range(300))
    assert "w255" in video_qa.judge_messages(rec, long, "hound")[0]["content"]
    assert "w256" not in video_qa.judge_messages(rec, long, "hound")[0]["content"]  # Hound keeps 256 words
    assert video_qa.judge_messages(rec, "pred-a")[0]["role"] == "system"  # videochatgpt stays the default
    with pytest.raises(ValueError, match="judge mode"):
        video_qa.judge_messages(rec, "x", "gpt")


def test_hound_mode_scores_accuracy_unparsed_and_judge_name() -> None:
    answers = [f"pred-{k}" for k in "abcde"]
    with judge_server(HOUND_REPLIES) as url:
        res = video_qa.judge_answers(_records(), answers, _client(url), "hound")
    assert res["n"] == 4 and res["n_unparsed"] == 1  # the reply without a score is not a silent 0
    assert res["accuracy"] == pytest.approx(3 / 4)  # 4, 5, 3 are ≥ 3; 1 is not
    assert res["score"] == pytest.approx((4 + 5 + 3 + 1) / 4) and res["score_range"] == "1-5"
    assert res["judge"] == "judge-7b" and res["judge_mode"] == "hound"
    assert all(r["judge"] == "judge-7b" and r["judge_mode"] == "hound" for r in res["records"])
    verdicts = {r["id"]: r["verdict"] for r in res["records"]}
    assert verdicts["qe"] is None and verdicts["qd"] == {
        "pred": False,
        "score": 1,
        "explanation": "contradicts the caption.",
    }
    assert len(_Judge.seen) == 5 and all(b["model"] == "judge-7b" for b in _Judge.seen)
    assert any("A man rides a bike (c)." in b["messages"][0]["content"] for b in _Judge.seen)


def test_videochatgpt_mode_through_the_same_judge() -> None:
    answers = [f"pred-{k}" for k in "abcde"]
    with judge_server(VCG_REPLIES) as url:
        res = video_qa.judge_answers(_records(with_caption=False), answers, _client(url))
    assert res["judge_mode"] == "videochatgpt" and res["score_range"] == "0-5"
    assert (res["n"], res["n_unparsed"]) == (4, 1)
    assert res["accuracy"] == pytest.approx(2 / 4) and res["score"] == pytest.approx((4 + 1 + 5 + 2) / 4)
    assert all(r["judge"] == "judge-7b" for r in res["records"])
    assert all(b["messages"][0]["role"] == "system" for b in _Judge.seen)


def test_hound_mode_needs_captions_naming_file_line_and_id(tmp_path: Path) -> None:
    (tmp_path / "v1.mp4").write_bytes(b"x")
    f = tmp_path / "qa.jsonl"
    rows = [
        {"id": "q1", "video": "v1.mp4", "question": "Q?", "answer": "a", "caption": "A dog runs."},
        {"id": "q2", "video": "v1.mp4", "question": "Q?", "answer": "a"},
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(video_qa.load_video_qa(f, tmp_path)) == 2  # videochatgpt needs no caption
    with pytest.raises(RecordError, match=rf"{f}:2 \(id q2\): the hound video QA judge needs .*'caption'"):
        video_qa.load_video_qa(f, tmp_path, "hound")
    with pytest.raises(RecordError, match=r"qa.json:a \(id qa\)"):  # records built in code, too
        video_qa.judge_answers(
            _records(with_caption=False), ["x"] * 5, _client("http://127.0.0.1:9/v1"), "hound"
        )
    with pytest.raises(ValueError, match="judge mode"):
        video_qa.judge_answers(_records(), ["x"] * 5, None, "gpt")


def _load_cli():
    spec = importlib.util.spec_from_file_location("eval_run_cli", ROOT / "eval" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_run_video_qa_flag_fails_early_without_captions(tmp_path: Path, capsys) -> None:
    (tmp_path / "v1").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "v1" / "1.png")
    qa = tmp_path / "qa.json"
    rows = [
        {"id": "a", "video": "v1", "question": "Q?", "answer": "a", "caption": "A."},
        {"id": "b", "video": "v1", "question": "Q?", "answer": "b"},
    ]
    qa.write_text(json.dumps(rows))
    cli = _load_cli()
    assert cli.build_parser().parse_args(["--model", "x"]).video_qa_judge == "videochatgpt"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--model", "x", "--video-qa-judge", "gpt"])
    args = [
        "--model",
        str(tmp_path),
        "--benchmarks",
        "videoqa",
        "--videoqa",
        str(qa),
        "--videoqa-videos",
        str(tmp_path),
    ]
    args += [
        "--judge-model",
        "j",
        "--judge-base-url",
        "http://127.0.0.1:9/v1",
        "--out",
        str(tmp_path / "out"),
    ]
    # the record without its caption stops the run before any model is loaded, naming file:line and id
    assert cli.main([*args, "--video-qa-judge", "hound"]) == 2
    err = capsys.readouterr().err
    assert f"{qa}:1:" in err and "(id b): the hound video QA judge needs" in err
    qa.write_text(json.dumps([{**rows[0], "video": "v2"}]))
    assert (
        cli.main(args) == 2 and "media file not found" in capsys.readouterr().err
    )  # every mode checks videos


def test_eval_run_video_qa_judge_flag_on_frame_folders(tmp_path: Path, make_tokenizer, capsys) -> None:
    from tests.serve_helpers import save_tiny_checkpoint

    videos = tmp_path / "frames"
    for v in ("v_1-Scene-001", "v_2-Scene-003"):
        (videos / v).mkdir(parents=True)
        for k in range(6):
            Image.fromarray(np.full((32, 32, 3), 40 * k, np.uint8)).save(videos / v / f"{k + 1}.jpg")
    rows = [
        {"id": "a", "video": "v_1-Scene-001", "question": "Q?", "answer": "a", "caption": "Dark to light."},
        {"id": "b", "video": "v_2-Scene-003", "question": "Q?", "answer": "b", "caption": "Fades in."},
    ]
    qa = tmp_path / "hound_qa.json"
    qa.write_text(json.dumps(rows))
    ckpt = save_tiny_checkpoint(make_tokenizer(), tmp_path / "isrt" / "final")
    cli = _load_cli()
    out = tmp_path / "eval"
    base = [
        "--model",
        f"m={ckpt}",
        "--benchmarks",
        "videoqa",
        "--videoqa",
        str(qa),
        "--videoqa-videos",
        str(videos),
    ]
    base += ["--max-new-tokens", "4", "--out", str(out), "--no-progress", "--judge-model", "judge-7b"]
    with judge_server({"Dark to light": "Explanation: ok\nScore: 4", "Fades in": "Score: 2"}) as url:
        assert cli.main([*base, "--judge-base-url", url, "--video-qa-judge", "hound"]) == 0
    res = json.loads((out / "results.json").read_text())["m"]["videoqa"]
    assert res["judge"] == "judge-7b" and res["judge_mode"] == "hound" and res["source"] == "files"
    assert (res["n"], res["accuracy"], res["score"]) == (2, 0.5, 3.0)
    records = json.loads((out / "records" / "m" / "videoqa.json").read_text())
    assert [r["judge"] for r in records] == ["judge-7b"] * 2 and records[0]["verdict"]["score"] == 4
