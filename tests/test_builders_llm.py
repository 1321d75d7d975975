"""The LLM back-end: reply validation on hand-written replies, and the builders against the real chat
server (``mmalign.serve``, a tiny saved checkpoint) on loopback."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mmalign.builders.align2llava_curate import RewriteBuilder
from mmalign.builders.io import read_jsonl
from mmalign.builders.llm_backend import LLMBackend, parse_json_reply
from mmalign.builders.lrv import LRVBuilder, LRVOptions
from mmalign.builders.lrv_rules import Instruction
from mmalign.builders.povid import POVIDBuilder, POVIDOptions
from mmalign.builders.povid_rules import CooccurrenceStats
from mmalign.builders.runner import run_builder
from mmalign.llm.client import ChatClient, LLMConfig

CONFIG = LLMConfig(base_url="http://127.0.0.1:9/v1", model="m")


def test_reply_validation() -> None:
    lrv = LRVBuilder(LRVOptions(), LLMBackend(ChatClient(CONFIG)))
    reply = 'Sure:\n```json\n[{"question": "What color is the star?", "answer": "There is no star.", "task": "nonexistent_element"},' \
        ' {"question": "How many circles?", "answer": "Two.", "task": "counting"}]\n```'  # fmt: skip
    assert lrv.validate(reply) == [
        Instruction("What color is the star?", "There is no star.", "negative", "nonexistent_element"),
        Instruction("How many circles?", "Two.", "counting"),
    ]
    for bad in (
        "no json here",
        '[{"question": "Q", "answer": "A", "task": "dancing"}]',
        "[]",
        '[{"question": "Q"}]',
    ):
        with pytest.raises(ValueError):
            lrv.validate(bad)
    with pytest.raises(ValueError, match="over 30 words"):
        lrv.validate(json.dumps([{"question": "Q", "answer": "w " * 31, "task": "counting"}]))
    povid = POVIDBuilder(POVIDOptions(), CooccurrenceStats(), llm=LLMBackend(ChatClient(CONFIG)))
    check = povid._validate("A red star.")
    got = check('{"rejected": "A blue star.", "kind": "attribute", "detail": "red -> blue"}')
    assert got.text == "A blue star." and got.kind == "attribute"
    with pytest.raises(ValueError, match="equals the truth"):
        check('{"rejected": "A red star.", "kind": "attribute"}')
    assert parse_json_reply('{"a": [1, 2]} trailing') == {"a": [1, 2]}


@pytest.mark.slow
def test_builders_against_the_chat_server(tmp_path, make_tokenizer) -> None:
    from mmalign.models.checkpoint import load_model
    from mmalign.serve.app import create_app
    from mmalign.serve.engine import ChatEngine
    from mmalign.serve.protocol import ServeLimits
    from tests.serve_helpers import running_server, save_tiny_checkpoint

    ckpt = save_tiny_checkpoint(make_tokenizer(), tmp_path / "tiny", context=4096)
    model, tokenizer = load_model(ckpt)
    engine = ChatEngine(model, tokenizer, "tiny", max_queue=16)
    (tmp_path / "images").mkdir()
    Image.new("RGB", (60, 60), "navy").save(tmp_path / "images" / "s0.png")
    scenes = [
        {
            "id": "s0",
            "image": "images/s0.png",
            "regions": [{"caption": "large red circle", "box": [2, 2, 16, 16]}],
        },
        {
            "id": "s1",
            "image": "images/missing.png",
            "regions": [{"caption": "blue star", "box": [40, 40, 10, 10]}],
        },
    ]
    inp = tmp_path / "dense.jsonl"
    inp.write_text("".join(json.dumps(s) + "\n" for s in scenes))
    with running_server(create_app(engine, ServeLimits(max_new_tokens=24), api_key="k")) as url:
        backend = LLMBackend.from_args(url + "/v1", "tiny", concurrency=2, max_retries=1, max_tokens=24)
        backend.client.config.api_key = "k"
        backend.client.config.backoff = 0.01
        assert isinstance(backend.client.chat([{"role": "user", "content": "Is there a star?"}]), str)
        lrv = LRVBuilder(LRVOptions(media_root=str(tmp_path)), backend)
        summary = run_builder(lrv, [inp], tmp_path / "lrv", {}, batch_size=8, commit_every=8, progress=False)
        errors = {e["id"]: e["reason"] for e in read_jsonl(tmp_path / "lrv" / "errors.jsonl")}
        # the tiny model writes no JSON: s0 (image sent as a data URL) is reported after 2 tries
        assert "gave no valid reply after 2 tries" in errors["s0"] and "image not found" in errors["s1"]
        assert summary["errors"] == 2 and summary["processed"] == 0

        sel = tmp_path / "selected.jsonl"
        rec = {
            "id": "r0",
            "image": "images/s0.png",  # a <image> needs its image, or the trainers reject the record
            "conversations": [
                {"from": "human", "value": "<image>\nWhat color is the circle?"},
                {"from": "gpt", "value": "The circle is red."},
            ],
        }
        sel.write_text(json.dumps(rec) + "\n")
        rewrite = RewriteBuilder("llm", llm=backend)
        summary = run_builder(rewrite, [sel], tmp_path / "rw", {}, progress=False)
        (out,) = read_jsonl(tmp_path / "rw" / "curated.jsonl")
        status = out["rewrite"]["status"]
        assert status in ("accepted", "rejected") and summary["counts"] == {f"rewrite_{status}": 1}
        if status == "rejected":  # the tiny model's text loses the circle/red: the original is kept
            assert out["conversations"][1]["value"] == "The circle is red." and out["rewrite"]["reason"]
