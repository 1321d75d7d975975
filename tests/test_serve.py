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


# ----------------------------------------------------------------------------- real-world media
def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def _pad_engine(engine):
    """The served model behind a second engine whose images are processed in ``pad`` mode."""
    import copy
    import dataclasses

    from mmalign.data.media import ImageProcessorConfig
    from mmalign.serve.engine import ChatEngine

    model = copy.copy(engine.model)  # shares the weights; only the config differs
    ip = dataclasses.replace(model.cfg.image_processor, mode="pad", mean=(0.2, 0.4, 0.6))
    model.cfg = dataclasses.replace(model.cfg, image_processor=ImageProcessorConfig(**dataclasses.asdict(ip)))
    return ChatEngine(model, engine.tokenizer, "tiny", max_queue=1)


def test_real_world_images_are_read_as_the_training_loader_reads_them(client, served, tmp_path) -> None:
    """Transparent logo, EXIF-rotated JPEG and 16-bit PNG: the server's pixels equal the loader's."""
    import numpy as np

    from mmalign.data.media import load_image, process_image
    from mmalign.serve.protocol import ServeLimits, parse_chat_request

    logo = np.zeros((32, 32, 4), np.uint8)
    logo[8:24, 8:24, 3] = 255  # black square on a transparent (black-RGB) background
    Image.fromarray(logo, "RGBA").save(tmp_path / "logo.png")
    phone = np.full((40, 80, 3), 255, np.uint8)
    phone[:, :16] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(phone).save(tmp_path / "phone.jpg", quality=95, exif=exif.tobytes())
    Image.fromarray(np.linspace(0, 65535, 32 * 32).astype(np.uint16).reshape(32, 32)).save(
        tmp_path / "deep.png"
    )
    mime = {".png": "image/png", ".jpg": "image/jpeg"}
    for engine in (served["engine"], _pad_engine(served["engine"])):
        ip = engine.model.cfg.image_processor
        for name in ("logo.png", "phone.jpg", "deep.png"):
            path = tmp_path / name
            msgs = _image_msg(_data_url(path.read_bytes(), mime[path.suffix]))
            prep = engine.prepare(parse_chat_request({"messages": msgs}, engine.placeholders, ServeLimits()))
            loader = process_image(load_image(path), ip)
            assert torch.equal(prep.images[0].float(), loader), (ip.mode, name)
            if name == "logo.png":  # background: white (resize) or the padding colour (pad)
                back = torch.ones(3) if ip.mode == "resize" else torch.zeros(3)
                torch.testing.assert_close(loader[:, 0, 0], back, atol=0.02, rtol=0)
                black = -torch.tensor(ip.mean) / torch.tensor(ip.std)
                torch.testing.assert_close(loader[:, 16, 16], black, atol=0.02, rtol=0)  # logo stays black
            if name == "phone.jpg":  # upright: the red bar on top (green channel low), white below
                assert loader[1, 0, 16] < -0.5 and loader[1, -1, 16] > 0.5  # (centre column: pad mode)
            if name == "deep.png":  # 16 bits: black top-left to white bottom-right, not clipped white
                mean, std = torch.tensor(ip.mean), torch.tensor(ip.std)
                torch.testing.assert_close(loader[:, 0, 0], -mean / std, atol=0.05, rtol=0)
                torch.testing.assert_close(loader[:, -1, -1], (1 - mean) / std, atol=0.05, rtol=0)
    r = client.chat.completions.create(
        model="tiny",
        messages=_image_msg(_data_url((tmp_path / "logo.png").read_bytes(), "image/png")),
        max_tokens=3,
    )
    assert r.choices[0].finish_reason in ("stop", "length")


def test_extreme_aspect_ratio_images_answer_413_fast(client, served) -> None:
    """140-byte PNGs of 20000×1 … 16,000,000×1 would pad to a gigantic square: 413 from the header."""
    import time

    import openai

    for width in (20_000, 1_000_000, 16_000_000):
        buf = io.BytesIO()
        Image.new("1", (width, 1), 1).save(buf, "PNG", optimize=True)
        assert len(buf.getvalue()) < 3000
        t = time.perf_counter()
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(
                model="tiny", messages=_image_msg(_data_url(buf.getvalue(), "image/png")), max_tokens=2
            )
        assert err.value.status_code == 413, width
        assert f"image of {width}×1 exceeds 67108864 pixels once padded" in err.value.message
        assert time.perf_counter() - t < 2.0
        (served["media"] / f"line{width}.png").write_bytes(buf.getvalue())  # the same as a local path
        with pytest.raises(openai.APIStatusError, match="once padded") as err:
            client.chat.completions.create(
                model="tiny", messages=_image_msg(f"line{width}.png"), max_tokens=2
            )
        assert err.value.status_code == 413
    assert _raw(served["url"] + "/health")[1]["status"] == "ok"  # and the server lives on
    # the engine bounds the work itself too (pad square ≤ MAX_IMAGE_PIXELS), whoever decoded the image
    from mmalign.serve.protocol import ChatRequest, RequestError

    engine = _pad_engine(served["engine"])
    req = ChatRequest(messages=[{"role": "user", "content": engine.placeholders[0] + "\nx"}])
    req.images = [Image.new("RGB", (20_000, 1))]
    with pytest.raises(RequestError, match="too large to process.*once padded") as err:
        engine.prepare(req)
    assert err.value.status == 413


def test_variable_frame_rate_video_through_the_server_is_sampled_by_time(client, served, tmp_path) -> None:
    from mmalign.data.media import load_video_frames, process_video
    from mmalign.serve.protocol import ServeLimits, parse_chat_request
    from tests.test_media import VFR_TIMES, _read_code, write_vfr_mp4

    engine = served["engine"]
    path = tmp_path / "vfr.mp4"
    write_vfr_mp4(path, VFR_TIMES)  # 1 s at 4 fps, then 1 s at 16 fps
    frames = load_video_frames(path, engine.model.cfg.video_frames)
    # 3 frames at 1/3, 1, 5/3 s of the 2 s → frames 1, 4, 14 (by index: 3, 10, 16)
    assert [_read_code(f) for f in frames] == [1, 4, 14]
    part = {"type": "video_url", "video_url": {"url": _data_url(path.read_bytes(), "video/mp4")}}
    msgs = [{"role": "user", "content": [part, {"type": "text", "text": "What happens?"}]}]
    prep = engine.prepare(parse_chat_request({"messages": msgs}, engine.placeholders, ServeLimits()))
    want = process_video(frames, engine.model.cfg.image_processor)
    assert torch.equal(prep.videos[0].float(), want)
    assert client.chat.completions.create(model="tiny", messages=msgs, max_tokens=3).choices
