"""Chat with an mmalign checkpoint: an OpenAI-compatible server with a web UI, or a terminal chat.

    python eval/chat.py serve --model tiny=checkpoints/tiny-shapeworld [--host 127.0.0.1 --port 8000] \
        [--api-key-env MMALIGN_API_KEY] [--media-root DIR] [--max-new-tokens 512]
    python eval/chat.py chat --model checkpoints/tiny-shapeworld --image runs/shapeworld/images/img_0_000000.png \
        [--video clip.mp4 | --video frames/clip_001/] [--prompt "What is in the image?"] [--temperature 0]

``serve`` opens the web UI at ``http://HOST:PORT/`` and the API at ``http://HOST:PORT/v1``
(``/v1/chat/completions`` with SSE streaming, ``/v1/models``): point any OpenAI client, or
mmalign's own judges and data builders (``MMALIGN_LLM_BASE_URL``), at it. It binds 127.0.0.1 by
default; an API key is required when the environment variable named by ``--api-key-env`` is set.
The model id that ``/v1/models`` lists and every response carries is ``NAME`` of ``--model
NAME=DIR``, else the path's name as ``eval/run.py`` gives it (``runs/dpo/final`` → ``dpo/final``).
``chat`` runs in the terminal: the media are attached to the first message; ``/image PATH``,
``/video PATH`` attach more (a video is a file or a folder of extracted frames, which the terminal
chat sends as a local path: it reads the paths its user names), ``/reset`` starts over, ``/quit``
(or EOF) leaves; ``--prompt`` answers once and exits.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mmalign.eval.common import parse_model_specs
from mmalign.llm.client import image_part
from mmalign.models.checkpoint import load_model
from mmalign.serve.engine import ChatEngine
from mmalign.serve.protocol import RequestError, ServeLimits, parse_chat_request


def model_name_and_dir(spec: str, name: str | None = None) -> tuple[str, Path]:
    """``--model`` (``NAME=DIR`` or ``DIR``) and ``--name`` → the served model id and its folder.

    A plain ``DIR`` is named by its path as ``eval/run.py`` names it (``runs/dpo/final`` →
    ``dpo/final``); ``--name`` overrides either.

    Raises:
        ValueError: a malformed spec, or a folder that does not exist.
    """
    ((given, folder),) = parse_model_specs([spec])
    if not folder.is_dir():
        raise ValueError(f"model folder not found: {folder}")
    return name or given, folder


def _engine(args: argparse.Namespace) -> ChatEngine:
    name, folder = model_name_and_dir(args.model, args.name)
    model, tokenizer = load_model(folder, template=getattr(args, "template", None))
    return ChatEngine(model, tokenizer, name, max_queue=getattr(args, "max_queue", 32))


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from mmalign.serve.app import create_app

    api_key = os.environ.get(args.api_key_env) or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(
            f"warning: serving on {args.host} without an API key (set ${args.api_key_env})", file=sys.stderr
        )
    limits = ServeLimits(
        max_body_bytes=args.max_body_mb * 2**20,
        max_image_bytes=args.max_image_mb * 2**20,
        max_images=args.max_images,
        max_new_tokens=args.max_new_tokens,
        media_root=args.media_root,
    )
    engine = _engine(args)
    print(
        f"serving {engine.model_name}: UI http://{args.host}:{args.port}/  API http://{args.host}:{args.port}/v1"
    )
    uvicorn.run(create_app(engine, limits, api_key), host=args.host, port=args.port, log_level="warning")
    return 0


def _media_part(path: str, video: bool) -> dict:
    if not video:
        return image_part(path)
    if Path(path).is_dir():  # a frame folder travels as a local path (the chat's media root is /)
        return {"type": "video_url", "video_url": {"url": str(Path(path).resolve())}}
    import base64
    import mimetypes

    mime = mimetypes.guess_type(path)[0] or "video/mp4"
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return {"type": "video_url", "video_url": {"url": f"data:{mime};base64,{data}"}}


def chat(args: argparse.Namespace) -> int:
    missing = [p for p in args.image if not Path(p).is_file()]
    missing += [p for p in args.video if not (Path(p).is_file() or Path(p).is_dir())]
    if missing:
        print(f"error: media file(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    engine = _engine(args)
    limits = ServeLimits(max_new_tokens=args.max_new_tokens, media_root=Path("/"))  # frame folders by path
    history: list[dict] = []
    attach = [_media_part(p, False) for p in args.image] + [_media_part(p, True) for p in args.video]
    interactive = args.prompt is None
    while True:
        if interactive:
            try:
                line = input("you> ").strip()
            except EOFError:
                return 0
        else:
            line = args.prompt
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            history, attach = [], []
            continue
        if line.startswith(("/image ", "/video ")):
            path = line.split(maxsplit=1)[1]
            video = line.startswith("/video")
            if Path(path).is_file() or (video and Path(path).is_dir()):
                attach.append(_media_part(path, video))
            else:
                print(f"error: no such file {path}", file=sys.stderr)
            continue
        if not line:
            continue
        message = {"role": "user", "content": [*attach, {"type": "text", "text": line}]}
        body = {
            "messages": [*history, message],
            "temperature": args.temperature,
            "max_tokens": args.max_new_tokens,
        }
        try:
            req = parse_chat_request(body, engine.placeholders, limits)
            gen = engine.run(req, engine.prepare(req))
        except RequestError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            if not interactive:
                return 2
            continue
        print("assistant> ", end="", flush=True)
        answer = "".join(print(d, end="", flush=True) or d for d in gen)
        print()
        history += [message, {"role": "assistant", "content": answer}]
        attach = []
        if not interactive:
            return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("serve", "chat"):
        p = sub.add_parser(name)
        p.add_argument(
            "--model", required=True, help="NAME=DIR or DIR: an mmalign checkpoint or llava-hf folder"
        )
        p.add_argument("--name", help="model id for clients (default: NAME, else named by the path)")
        p.add_argument("--max-new-tokens", type=int, default=512)
        p.add_argument(
            "--template",
            help="chat template overriding the checkpoint's: built-in name, Jinja file or source",
        )
    s = sub.choices["serve"]
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key-env", default="MMALIGN_API_KEY", help="env var holding the API key")
    s.add_argument("--media-root", type=Path, help="allow local media paths inside this folder")
    s.add_argument("--max-body-mb", type=int, default=64)
    s.add_argument("--max-image-mb", type=int, default=10)
    s.add_argument("--max-images", type=int, default=8)
    s.add_argument("--max-queue", type=int, default=32)
    c = sub.choices["chat"]
    c.add_argument("--image", action="append", default=[], help="image to attach (repeatable)")
    c.add_argument(
        "--video", action="append", default=[], help="video file or folder of frames to attach (repeatable)"
    )
    c.add_argument("--prompt", help="answer this once and exit")
    c.add_argument("--temperature", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        model_name_and_dir(args.model, args.name)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return serve(args) if args.command == "serve" else chat(args)


if __name__ == "__main__":
    sys.exit(main())
