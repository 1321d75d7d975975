"""The chat demo end to end: the real ``openai`` client against the server, the LLM client and an
LLM-judged benchmark against it, the CLI chat, and the web UI in headless Chromium (Playwright).

The web UI test saves ``artifacts/web_ui.png`` (gitignored).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
KEY = "test-key-123"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory, make_tokenizer):
    """A tiny checkpoint (4096-token context, so judge prompts fit) served with an API key."""
    from mmalign.models.checkpoint import load_model
    from mmalign.serve.app import create_app
    from mmalign.serve.engine import ChatEngine
    from mmalign.serve.protocol import ServeLimits
    from tests.serve_helpers import running_server, save_tiny_checkpoint

    tmp = tmp_path_factory.mktemp("serve")
    ckpt = save_tiny_checkpoint(make_tokenizer(), tmp / "tiny", context=4096)
    media = tmp / "media"
    media.mkdir()
    Image.new("RGB", (24, 24), "green").save(media / "green.png")
    model, tokenizer = load_model(ckpt)
    engine = ChatEngine(model, tokenizer, "tiny", max_queue=8)
    limits = ServeLimits(max_body_bytes=2**20, max_image_bytes=200_000, max_new_tokens=64, media_root=media)
    with running_server(create_app(engine, limits, api_key=KEY)) as url:
        yield {"url": url, "engine": engine, "ckpt": ckpt, "media": media, "tmp": tmp}


@pytest.fixture()
def client(served):
    from openai import OpenAI

    return OpenAI(base_url=served["url"] + "/v1", api_key=KEY, max_retries=0)


def _png_url(color: str = "red", size: tuple[int, int] = (40, 30), noise: bool = False) -> str:
    buf = io.BytesIO()
    img = (
        Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
        if noise
        else Image.new("RGB", size, color)
    )
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _image_msg(url: str, text: str = "What colour is the circle?") -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}],
        }
    ]


def test_models_text_and_image_completions(client, served) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]
    r = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Is there a star?"}], max_tokens=6, temperature=0
    )
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens <= 6 and r.usage.prompt_tokens > 0
    assert r.choices[0].finish_reason in ("stop", "length")

    # greedy output equals LMM.generate on the same prompt
    engine = served["engine"]
    msgs = _image_msg(_png_url())
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=0)
    from mmalign.serve.protocol import ServeLimits, parse_chat_request

    req = parse_chat_request({"messages": msgs, "max_tokens": 8}, engine.placeholders, ServeLimits())
    prep = engine.prepare(req)
    new = engine.model.generate(
        prep.input_ids, torch.ones_like(prep.input_ids), images=prep.images, max_new_tokens=8,
        eos_token_id=engine.processor.stop_token_ids, pad_token_id=engine.processor.pad_token_id,
    )  # fmt: skip
    expected = engine.tokenizer.decode(new[0], skip_special_tokens=True)
    assert r.choices[0].message.content == expected
    assert r.usage.prompt_tokens == prep.input_ids.shape[1]

    # a local file under the media root
    local = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "green.png"}}]}]
    assert client.chat.completions.create(model="tiny", messages=local, max_tokens=3).choices


def test_streaming_matches_non_streaming(client) -> None:
    msgs = _image_msg(_png_url("blue"))
    full = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(
        model="tiny",
        messages=msgs,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(deltas) == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    # sampling with a seed is reproducible
    a, b = (
        client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=1.0, seed=7)
        for _ in range(2)
    )
    assert a.choices[0].message.content == b.choices[0].message.content


def _raw(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """A plain HTTP request (urllib): status and JSON body, errors included."""
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        url, data=data, headers=headers or {}, method="POST" if data is not None else "GET"
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_bad_inputs_get_clear_4xx(client, served) -> None:
    import openai

    cases = [
        (_image_msg("data:image/png;base64,!!notbase64"), openai.BadRequestError, "bad base64"),
        (_image_msg("data:application/pdf;base64,aGk="), openai.APIStatusError, "is not an image"),
        (_image_msg("../../etc/passwd"), openai.PermissionDeniedError, "outside the allowed media root"),
        (
            _image_msg(_png_url(size=(400, 400), noise=True)),
            openai.APIStatusError,
            "larger than 200000 bytes",
        ),
    ]
    statuses = []
    for msgs, exc, match in cases:
        with pytest.raises(exc) as err:
            client.chat.completions.create(model="tiny", messages=msgs, max_tokens=2)
        assert 400 <= err.value.status_code < 500 and match in err.value.message
        statuses.append(err.value.status_code)
    assert statuses == [400, 415, 403, 413]
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    url = served["url"] + "/v1/chat/completions"
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    status, body = _raw(url, b"{not json", auth)
    assert status == 400 and "invalid JSON" in body["error"]["message"]
    # an oversized body is refused from its Content-Length, before it is read
    import http.client
    import json
    from urllib.parse import urlparse

    conn = http.client.HTTPConnection(urlparse(url).netloc, timeout=30)
    conn.putrequest("POST", "/v1/chat/completions")
    for k, v in {**auth, "Content-Length": str(2**20 + 10)}.items():
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and "exceeds the limit" in json.loads(resp.read())["error"]["message"]
    conn.close()
    status, body = _raw(
        url, b'{"messages": [{"role": "user", "content": "x"}]}', {"Authorization": "Bearer no"}
    )
    assert status == 401 and "API key" in body["error"]["message"]
    assert _raw(served["url"] + "/v1/models")[0] == 401
    assert _raw(served["url"] + "/health")[1]["status"] == "ok"


def test_concurrent_requests_are_queued_and_a_full_queue_is_503(client, served) -> None:
    results: list[str] = []
    errors: list[Exception] = []

    def ask(i: int) -> None:
        try:
            r = client.chat.completions.create(
                model="tiny", messages=_image_msg(_png_url(), f"circle {i}?"), max_tokens=10, temperature=0
            )
            results.append(r.choices[0].message.content)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 6

    from mmalign.serve.engine import ChatEngine
    from mmalign.serve.protocol import RequestError, ServeLimits, parse_chat_request

    engine = served["engine"]
    small = ChatEngine(engine.model, engine.tokenizer, "tiny", max_queue=1)
    req = parse_chat_request(
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 64}, small.placeholders, ServeLimits()
    )
    prep = small.prepare(req)
    done = threading.Event()
    jobs = [small.submit(req, prep, lambda ev: done.set() if ev[0] != "delta" else None)]
    with pytest.raises(RequestError, match="queue full") as err:
        for _ in range(3):
            jobs.append(small.submit(req, prep, lambda ev: None))
    assert err.value.status == 503
    assert done.wait(60)


def test_llm_client_and_llm_judged_mmhal_against_the_server(served, tmp_path) -> None:
    """The server as the judges' back-end: the tiny model writes no rating, so each counts 0 (unparsed)."""
    from mmalign.data.processor import MultimodalProcessor
    from mmalign.eval import mmhal
    from mmalign.eval.common import GenerationOptions
    from mmalign.llm.client import ChatClient, LLMConfig, user_message
    from mmalign.shapeworld.generate import generate

    cfg = LLMConfig(
        served["url"] + "/v1", "tiny", api_key=KEY, max_tokens=8, max_retries=1, backoff=0.01, concurrency=3
    )
    client = ChatClient(cfg)
    img = served["media"] / "green.png"
    texts = client.chat_many([[user_message("What is this?", [img])]] * 3)
    assert len(texts) == 3 and len(set(texts)) == 1 and all(isinstance(t, str) for t in texts)

    generate(tmp_path / "sw", n_images=10, n_videos=0, seed=1, progress=False)
    records = mmhal.shapeworld_records(tmp_path / "sw", "train", n=3)
    engine = served["engine"]
    proc = MultimodalProcessor.for_model(engine.model, engine.tokenizer)
    result = mmhal.run_mmhal(engine.model, proc, records, GenerationOptions(4, 8), judge=client)
    assert result["judge"] == "tiny" and result["n"] == 3
    assert result["n_unparsed"] == 3 and result["average"] == 0.0 and result["hallucination_rate"] == 1.0
    assert all(r["model_answer"] is not None and r["rating"] == 0 for r in result["records"])


def test_cli_chat_answers_once(served, capsys) -> None:
    img = served["media"] / "green.png"
    out = subprocess.run(
        [sys.executable, str(ROOT / "eval/chat.py"), "chat", "--model", str(served["ckpt"]), "--image", str(img),
         "--prompt", "What colour is it?", "--max-new-tokens", "5"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("assistant> ")
    spec = importlib.util.spec_from_file_location("eval_chat", ROOT / "eval" / "chat.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    missing = served["tmp"] / "missing.png"
    assert cli.main(["chat", "--model", str(served["ckpt"]), "--image", str(missing), "--prompt", "x"]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_web_ui_image_and_video_conversation(served, tmp_path) -> None:
    """Upload an image, ask, see the reply; then a video in the same conversation; screenshot."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make setup does)")
    from playwright.sync_api import sync_playwright

    from mmalign.shapeworld.video import write_mp4

    Image.new("RGB", (48, 48), "red").save(tmp_path / "red.png")
    write_mp4(
        [Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue", "white")], tmp_path / "clip.mp4", 4
    )
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(served["url"] + "/")
        assert page.locator("#model-name").inner_text() == "tiny"
        page.fill("#api-key", KEY)
        page.dispatch_event("#api-key", "change")
        page.set_input_files("#media", str(tmp_path / "red.png"))
        page.wait_for_selector("#attachments .chip[data-kind=image] img")
        page.fill("#prompt", "What colour is the square?")
        page.click("#send")
        page.wait_for_selector(".msg.assistant[data-done=true]", timeout=60_000)
        assert page.locator(".msg.user img").count() == 1
        assert page.locator(".msg.user .text").first.inner_text() == "What colour is the square?"
        assert page.locator(".msg.assistant .text").first.inner_text().strip() != ""
        assert page.locator(".msg.error").count() == 0

        page.set_input_files("#media", str(tmp_path / "clip.mp4"))
        page.wait_for_selector("#attachments .chip[data-kind=video] video")
        page.fill("#prompt", "What happens in the video?")
        page.press("#prompt", "Enter")
        page.wait_for_function(
            "document.querySelectorAll('.msg.assistant[data-done=true]').length == 2", timeout=60_000
        )
        assert page.locator(".msg.user video").count() == 1 and page.locator(".msg.error").count() == 0
        page.screenshot(path=str(artifacts / "web_ui.png"), full_page=True)

        page.fill("#api-key", "wrong")
        page.dispatch_event("#api-key", "change")
        page.fill("#prompt", "again")
        page.click("#send")
        page.wait_for_selector(".msg.error")
        assert "API key" in page.locator(".msg.error .text").inner_text()
        browser.close()
    assert (artifacts / "web_ui.png").stat().st_size > 1000
