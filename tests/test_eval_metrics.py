"""Benchmark metrics and parsers on hand-computed cases; request checking; the LLM client's retries."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from mmalign.data.formats import RecordError
from mmalign.eval import gavie, mmhal, video_qa
from mmalign.eval.chair import CocoVocabulary, chair_scores, coco_ground_truth, singularize
from mmalign.eval.common import model_name_from_path, parse_model_specs
from mmalign.eval.pope import load_pope, split_name
from mmalign.eval.report import headline_metrics, markdown_table
from mmalign.llm.client import ChatClient, InvalidResponse, LLMConfig, LLMError, image_part
from mmalign.serve.protocol import RequestError, ServeLimits, parse_chat_request
from mmalign.shapeworld.world import Obj, Scene

SYNONYMS = "person, girl, boy, man, woman, people, child\nmotorcycle, motor bike, motorbike\nhot dog\nbird\ntoilet\ndog, puppy\n"


def _scene() -> Scene:
    objs = [
        Obj("circle", "red", "large", 0, 0, (0, 0, 10, 10)),
        Obj("circle", "blue", "small", 0, 1, (20, 0, 30, 10)),
        Obj("square", "green", "small", 1, 1, (20, 20, 30, 30)),
    ]
    return Scene("s1", objs, "navy")


# ----------------------------------------------------------------------------- POPE
def test_pope_file_reading_and_split_names(tmp_path: Path) -> None:
    f = tmp_path / "coco_pope_adversarial.json"
    f.write_text('{"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "label": "Yes"}\n')
    assert load_pope(f)[0]["label"] == "yes" and split_name(f) == "adversarial"
    f.write_text('{"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "label": "maybe"}\n')
    with pytest.raises(RecordError, match=r"coco_pope_adversarial.json:1: label"):
        load_pope(f)
    f.write_text('{"question_id": 1, "image": "a.jpg", "label": "yes"}\n')
    with pytest.raises(RecordError, match=r":1: missing \['text'\]"):
        load_pope(f)


# ----------------------------------------------------------------------------- CHAIR
def test_chair_coco_word_matching(tmp_path: Path) -> None:
    syn = tmp_path / "synonyms.txt"
    syn.write_text(SYNONYMS)
    vocab = CocoVocabulary.from_synonyms(syn)
    assert [singularize(w) for w in ("people", "buses", "puppies", "dogs", "glass", "knives")] == [
        "person", "bus", "puppy", "dog", "glass", "knife"
    ]  # fmt: skip
    caption = (
        "Two men ride motor bikes past a hot dog stand; a baby bird sits on the toilet seat with puppies."
    )
    assert vocab.objects(caption) == ["person", "motorcycle", "hot dog", "bird", "toilet", "dog"]
    assert vocab.objects("A hot dog and a dog.") == ["hot dog", "dog"]


def test_chair_scores_hand_computed() -> None:
    # caption 1: 3 mentions, 1 hallucinated (dog); caption 2: 2 mentions, none hallucinated
    res = chair_scores(
        [["person", "dog", "person"], ["bird", "toilet"]], [{"person", "bird"}, {"bird", "toilet"}]
    )
    assert res["chair_i"] == pytest.approx(1 / 5) and res["chair_s"] == pytest.approx(1 / 2)
    assert res["recall"] == pytest.approx(3 / 4) and res["n_hallucinated"] == 1


def test_coco_ground_truth_merges_instances_and_captions(tmp_path: Path) -> None:
    syn = tmp_path / "synonyms.txt"
    syn.write_text(SYNONYMS)
    inst = tmp_path / "instances.json"
    inst.write_text(
        json.dumps(
            {
                "images": [{"id": 7, "file_name": "COCO_7.jpg"}, {"id": 8, "file_name": "COCO_8.jpg"}],
                "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
                "annotations": [{"id": 1, "image_id": 7, "category_id": 18}],
            }
        )
    )
    caps = tmp_path / "captions.json"
    caps.write_text(json.dumps({"annotations": [{"image_id": 7, "caption": "A woman walks her puppy."}]}))
    truth, files = coco_ground_truth(CocoVocabulary.from_synonyms(syn), inst, caps)
    assert truth == {7: {"dog", "person"}, 8: set()} and files[8] == "COCO_8.jpg"
    inst.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not a COCO instances file"):
        coco_ground_truth(CocoVocabulary.from_synonyms(syn), inst)


# ----------------------------------------------------------------------------- MMHal-Bench
def test_mmhal_rating_parse_and_summary() -> None:
    assert mmhal.parse_rating("The answer is fine.\nRating: 5, very informative") == 5
    assert mmhal.parse_rating("rating: 2 ... as said, Rating: 2") == 2
    for bad in ("no score here", "Rating: 4 or maybe Rating: 1", "Rating: 9"):
        with pytest.raises(ValueError):
            mmhal.parse_rating(bad)
    rated = [
        {"question_type": "attribute", "rating": 6},
        {"question_type": "attribute", "rating": 2},
        {"question_type": "counting", "rating": 0, "unparsed": True},
        {"question_type": "counting", "rating": 4},
    ]
    s = mmhal.summarize(rated)
    assert s["average"] == 3.0 and s["hallucination_rate"] == 0.5 and s["n_unparsed"] == 1
    assert s["per_type"] == {"attribute": 4.0, "counting": 2.0}
    prompt = mmhal.judge_prompt(
        {"image_content": ["cat", "sofa"], "question": "Q?", "gt_answer": "A."}, "The cat sleeps."
    )
    assert "cat, sofa" in prompt and "Q?" in prompt and "The cat sleeps." in prompt and "Rating: 0" in prompt


def test_mmhal_exact_ratings() -> None:
    scene = _scene().to_dict()

    def rate(kind: dict, text: str) -> int:
        return mmhal.exact_rating({"scene": scene, "truth": kind}, text)

    count = {"type": "count", "answer": "3"}
    assert rate(count, "There are 3 objects.") == 5
    assert rate(count, "There are 4 objects.") == 0  # a definite wrong answer is a hallucination
    assert rate(count, "I cannot tell.") == 3
    assert rate(count, "3 objects, and a star.") == 2  # correct, but names an absent shape
    absent = {"type": "absent", "shape": "star"}
    assert rate(absent, "There is no star in the image.") == 5
    assert rate(absent, "The star is yellow.") == 0
    holistic = {"type": "holistic"}
    assert rate(holistic, "A red circle, a blue circle and a green square.") == 5
    assert rate(holistic, "A red circle.") == 4
    assert rate(holistic, "A red circle and a heart.") == 1
    assert rate({"type": "background", "answer": "navy"}, "The background is navy.") == 5


# ----------------------------------------------------------------------------- GAVIE
def test_gavie_parse_prompt_and_exact_scores() -> None:
    assert gavie.parse_scores("Accuracy: 7\nReason: ok\nRelevancy: 9.5\nReason: ok") == {
        "accuracy": 7.0,
        "relevancy": 9.5,
    }
    for bad in ("Accuracy: 7", "Accuracy: 11\nRelevancy: 3"):
        with pytest.raises(ValueError):
            gavie.parse_scores(bad)
    rec = {"regions": [{"caption": "large red circle", "box": [0, 0, 10, 10]}], "instruction": "Describe."}
    assert "large red circle X: 0 Y: 0 Width: 10 Height: 10" in gavie.judge_prompt(rec, "x")
    scene = _scene().to_dict()
    describe = {"scene": scene, "truth": {"type": "describe"}}
    # 4 mentions: red circle ✓, green square ✓, yellow circle ✗ (colour), star ✗ (absent)
    s = gavie.exact_scores(describe, "A red circle, a green square, a yellow circle and a star.")
    assert s == {"accuracy": 5.0, "relevancy": 10.0}
    assert gavie.exact_scores(describe, "Nothing to say.") == {"accuracy": 0.0, "relevancy": 0.0}
    q = {"scene": scene, "truth": {"type": "existence", "answer": "yes", "shape": "circle"}}
    assert gavie.exact_scores(q, "Yes.") == {"accuracy": 10.0, "relevancy": 10.0}
    assert gavie.exact_scores(q, "No.") == {"accuracy": 0.0, "relevancy": 10.0}


# ----------------------------------------------------------------------------- video QA
def test_video_qa_judgement_parse() -> None:
    assert video_qa.parse_judgement("{'pred': 'yes', 'score': 4}") == {"pred": True, "score": 4}
    assert video_qa.parse_judgement('Here: {"pred": "No", "score": "1"} done') == {"pred": False, "score": 1}
    for bad in ("yes, 4", "{'pred': 'maybe', 'score': 3}", "{'pred': 'yes', 'score': 7}", "{'pred': 'yes'}"):
        with pytest.raises(ValueError):
            video_qa.parse_judgement(bad)
    msgs = video_qa.judge_messages({"question": "Q?", "answer": "left"}, "to the left")
    assert msgs[0]["role"] == "system" and "Correct Answer: left" in msgs[1]["content"]


def test_video_qa_records_accept_published_aliases(tmp_path: Path) -> None:
    (tmp_path / "v1.mp4").write_bytes(b"x")
    f = tmp_path / "qa.json"
    f.write_text(json.dumps([{"video_name": "v1", "question_id": "q1", "question": "Q?", "answer": "a"}]))
    rec = video_qa.load_video_qa(f, tmp_path)[0]
    assert rec["id"] == "q1" and rec["video_path"] == str(tmp_path / "v1.mp4")
    f.write_text(json.dumps([{"video_name": "missing", "question": "Q?", "answer": "a"}]))
    with pytest.raises(FileNotFoundError, match=r"qa.json:1: media file not found"):
        video_qa.load_video_qa(f, tmp_path)


# ----------------------------------------------------------------------------- report
def test_markdown_table_side_by_side() -> None:
    a = {"chair": {"chair_i": 0.2, "chair_s": 0.5, "recall": 0.9}, "pope": {"random": {"f1": 0.8}}}
    b = {"chair": {"chair_i": 0.1, "chair_s": 0.6, "recall": 0.7}}
    table = markdown_table({"base": a, "dpo": b})
    assert table.splitlines()[0] == "| metric | base | dpo |"
    assert "| CHAIR-i ↓ | 0.200 | **0.100** |" in table and "| CHAIR-s ↓ | **0.500** | 0.600 |" in table
    # one model with a value: nothing to compare, nothing bold
    assert "| POPE random F1 ↑ | 0.800 | – |" in table and "MMHal" not in table
    assert headline_metrics(b) == {"CHAIR-i": 0.1, "CHAIR-s": 0.6, "caption recall": 0.7}


def test_markdown_table_no_bold_ties_or_zeros_and_flags_unread_answers() -> None:
    def pope(f1: float, unread: int, n: int = 300) -> dict:
        average = {"accuracy": 0.5, "yes_ratio": 0.5, "n": n, "n_unparseable": unread}
        return {"random": {"f1": f1}, "average": average, "parser": "reference", "unparseable_as": "yes"}

    by_model = {
        "sft": {"pope": pope(0.8, 12), "chair": {"chair_i": 0.0, "chair_s": 0.5, "recall": 0.0}},
        "dpo/final": {"pope": pope(0.80004, 0), "chair": {"chair_i": 0.0, "chair_s": 0.4, "recall": 0.0}},
        "control": {"pope": pope(0.7, 0), "chair": {"chair_i": 0.1, "chair_s": 0.6, "recall": 0.0}},
    }
    by_model["control"]["mmhal"] = {"average": 3.0, "n": 8, "n_unparsed": 2}
    lines = markdown_table(by_model).splitlines()
    assert lines[0] == "| metric | sft | dpo/final | control |"
    assert "| POPE random F1 ↑ | 0.800 | 0.800 | 0.700 |" in lines  # tie as printed: no bold
    assert "| CHAIR-i ↓ | 0.000 | 0.000 | 0.100 |" in lines  # best is a (tied) zero
    assert "| caption recall ↑ | 0.000 | 0.000 | 0.000 |" in lines
    assert "| CHAIR-s ↓ | 0.500 | **0.400** | 0.600 |" in lines
    assert "| POPE avg accuracy ↑ | 0.500 | 0.500 | 0.500 |" in lines
    assert "| POPE answers fitting neither yes nor no | ⚠ 12 (4.0%) | 0 (0.0%) | 0 (0.0%) |" in lines
    assert "| MMHal judge replies without a rating | – | – | ⚠ 2 (25.0%) |" in lines
    note = "⚠ sft: 12 of 300 POPE answers (4.0%) fit neither yes nor no and were scored as 'yes'"
    assert any(line.startswith(note) for line in lines)
    assert not any(line.startswith(("⚠ dpo", "⚠ control")) for line in lines)
    lone = {"solo": {"chair": {"chair_i": 0.3}}}
    assert "| CHAIR-i ↓ | 0.300 |" in markdown_table(lone)


def test_model_names_from_specs_and_paths(tmp_path: Path) -> None:
    for folder in (
        "runs/dpo/final",
        "runs/sft/final",
        "other/dpo/final",
        "ckpt/tiny",
        "runs/dpo/checkpoints/step_000100",
    ):
        (tmp_path / folder).mkdir(parents=True)
    r = tmp_path / "runs"
    assert parse_model_specs([str(r / "dpo/final"), str(r / "sft/final"), str(tmp_path / "ckpt/tiny")]) == [
        ("dpo/final", r / "dpo/final"), ("sft/final", r / "sft/final"), ("tiny", tmp_path / "ckpt/tiny"),
    ]  # fmt: skip
    assert model_name_from_path(r / "dpo/checkpoints/step_000100") == "dpo/checkpoints/step_000100"
    # two runs with one name: parents until they differ; a user NAME is kept as given
    specs = [str(r / "dpo/final"), str(tmp_path / "other/dpo/final"), f"mine={r / 'sft/final'}"]
    assert [n for n, _ in parse_model_specs(specs)] == ["runs/dpo/final", "other/dpo/final", "mine"]
    assert [n for n, _ in parse_model_specs([f"dpo/final={r / 'sft/final'}", str(r / "dpo/final")])] == [
        "dpo/final",
        "runs/dpo/final",
    ]
    assert [n for n, _ in parse_model_specs([str(r / "dpo/final")] * 2)] == ["dpo/final", "dpo/final#2"]
    for bad, match in (
        ([f"a={r}", f"a={tmp_path}"], r"the name\(s\) \['a'\] are given to more than one model"),
        ([f"={r}"], "expected NAME=DIR or DIR"),
        ([f"../up={r}"], "must not be an absolute path"),
    ):
        with pytest.raises(ValueError, match=match):
            parse_model_specs(bad)


# ----------------------------------------------------------------------------- request checking
def _png(size: tuple[int, int] = (8, 8)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, "red").save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _body(*parts: dict, **kw) -> dict:
    return {"messages": [{"role": "user", "content": [*parts, {"type": "text", "text": "hi"}]}], **kw}


def test_parse_chat_request_builds_placeholders_and_merges_turns() -> None:
    lim = ServeLimits()
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": _png()}},
                    {"type": "text", "text": "a"},
                ],
            },
            {"role": "user", "content": "b"},
        ],
        "max_tokens": 5,
        "temperature": 0,
        "stop": "x",
    }
    req = parse_chat_request(body, ("<image>", "<video>"), lim)
    assert [m["role"] for m in req.messages] == ["system", "user"]
    assert req.messages[1]["content"] == "<image>\na\nb" and len(req.images) == 1
    assert (req.max_new_tokens, req.temperature, req.stop) == (5, 0.0, ["x"])


@pytest.mark.parametrize(
    ("body", "status", "match"),
    [
        (_body({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}), 400, "bad base64"),
        (
            _body({"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}}),
            415,
            "not an image",
        ),
        (
            _body({"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}),
            415,
            "not a readable",
        ),
        (_body({"type": "image_url", "image_url": {"url": "https://x.org/a.png"}}), 400, "remote URLs"),
        (
            _body({"type": "image_url", "image_url": {"url": "/etc/passwd"}}),
            400,
            "local file paths are disabled",
        ),
        (_body({"type": "audio", "audio": {}}), 400, "unsupported content part type 'audio'"),
        (_body({"type": "video_url", "video_url": {"url": "data:video/ogg;base64,aGk="}}), 415, "video type"),
        (_body(max_tokens=0), 400, "'max_tokens' must be in"),
        (_body(n=2), 400, "'n' must be in"),
        ({"messages": [{"role": "tool", "content": "x"}]}, 400, "unsupported role 'tool'"),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
            400,
            "last message",
        ),
        ({"messages": [{"role": "user", "content": "look <image>"}]}, 400, "must not contain <image>"),
        ({"messages": []}, 400, "non-empty list"),
    ],
)
def test_parse_chat_request_rejects_bad_input(body: dict, status: int, match: str) -> None:
    with pytest.raises(RequestError, match=match) as err:
        parse_chat_request(body, ("<image>", "<video>"), ServeLimits())
    assert err.value.status == status


def test_media_limits_and_root(tmp_path: Path) -> None:
    root = tmp_path / "media"
    root.mkdir()
    Image.new("RGB", (4, 4)).save(root / "ok.png")
    (tmp_path / "secret.png").write_bytes((root / "ok.png").read_bytes())
    lim = ServeLimits(media_root=root, max_images=1, max_image_pixels=100)
    ok = parse_chat_request(
        _body({"type": "image_url", "image_url": {"url": "ok.png"}}), ("<image>", ""), lim
    )
    assert ok.images[0].size == (4, 4)
    cases = [
        ("../secret.png", 403, "outside the allowed media root"),
        (f"file://{tmp_path}/secret.png", 403, "outside"),
        ("missing.png", 400, "no such file"),
    ]
    for url, status, match in cases:
        with pytest.raises(RequestError, match=match) as err:
            parse_chat_request(_body({"type": "image_url", "image_url": {"url": url}}), ("<image>", ""), lim)
        assert err.value.status == status
    two = _body(*[{"type": "image_url", "image_url": {"url": "ok.png"}}] * 2)
    with pytest.raises(RequestError, match="more than 1 images"):
        parse_chat_request(two, ("<image>", ""), lim)
    big = _body({"type": "image_url", "image_url": {"url": _png((20, 20))}})
    with pytest.raises(RequestError, match="exceeds 100 pixels") as err:
        parse_chat_request(big, ("<image>", ""), lim)
    assert err.value.status == 413
    video = _body({"type": "video_url", "video_url": {"url": "data:video/mp4;base64,aGk="}})
    with pytest.raises(RequestError, match="takes no video"):
        parse_chat_request(video, ("<image>", ""), lim)


# ----------------------------------------------------------------------------- LLM client
class _Flaky(BaseHTTPRequestHandler):
    """Answers 503 for the first ``fail`` requests, then a chat completion; 400 for model 'bad'."""

    fail = 2
    seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"body": body, "auth": self.headers.get("Authorization")})
        if body["model"] == "bad":
            self._send(400, {"error": {"message": "no such model"}})
        elif type(self).fail > 0:
            type(self).fail -= 1
            self._send(503, {"error": {"message": "busy"}})
        else:
            text = "Rating: 4" if len(type(self).seen) % 2 == 0 else "no rating"
            self._send(200, {"choices": [{"message": {"role": "assistant", "content": text}}]})

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_llm_client_retries_backoff_validation_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MMALIGN_LLM_BASE_URL", f"http://127.0.0.1:{server.server_port}/v1")
        monkeypatch.setenv("MMALIGN_LLM_API_KEY", "sekret")
        cfg = LLMConfig.from_env(model="judge", backoff=0.01, max_retries=4)
        client = ChatClient(cfg)
        # 2 × 503 then "no rating" (invalid) then "Rating: 4"
        assert client.chat([{"role": "user", "content": "rate"}], validate=mmhal.parse_rating) == 4
        assert len(_Flaky.seen) == 4 and _Flaky.seen[0]["auth"] == "Bearer sekret"
        assert _Flaky.seen[0]["body"]["temperature"] == 0.0
        with pytest.raises(LLMError, match="HTTP 400: .*no such model") as err:
            ChatClient(LLMConfig(cfg.base_url, "bad", backoff=0.01)).chat([{"role": "user", "content": "x"}])
        assert err.value.status == 400 and len(_Flaky.seen) == 5  # a 4xx is not retried
        never = ChatClient(LLMConfig(cfg.base_url, "judge", backoff=0.01, max_retries=0))
        _Flaky.seen.clear()
        with pytest.raises(InvalidResponse):
            never.chat([{"role": "user", "content": "x"}], validate=mmhal.parse_rating)
        assert never.chat_many(
            [[{"role": "user", "content": "x"}]], validate=mmhal.parse_rating, on_invalid="none"
        ) == [4]
    finally:
        server.shutdown()
    with pytest.raises(ValueError, match="MMALIGN_LLM_BASE_URL"):
        monkeypatch.delenv("MMALIGN_LLM_BASE_URL")
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
        LLMConfig.from_env(model="m")


def test_image_part_is_a_data_url(tmp_path: Path) -> None:
    Image.new("RGB", (3, 3), "blue").save(tmp_path / "a.png")
    url = image_part(tmp_path / "a.png")["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (3, 3)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        image_part(tmp_path / "missing.png")


def test_markdown_table_names_each_video_qa_score_scale() -> None:
    def vqa(score: float, rng: str, mode: str) -> dict:
        return {"videoqa": {"score": score, "accuracy": 0.5, "score_range": rng, "judge_mode": mode}}

    same = markdown_table({"a": vqa(3.0, "0-5", "videochatgpt"), "b": vqa(3.5, "0-5", "videochatgpt")})
    assert "| video QA mean judge score ↑ | 3.000 | **3.500** |" in same
    assert (
        "video QA score scale: a 0-5 (videochatgpt), b 0-5 (videochatgpt)." in same and "⚠ video" not in same
    )
    mixed = markdown_table({"a": vqa(3.0, "0-5", "videochatgpt"), "b": vqa(3.5, "1-5", "hound")})
    assert "⚠ video QA score scale: a 0-5 (videochatgpt), b 1-5 (hound); judged differently" in mixed
