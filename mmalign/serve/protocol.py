"""OpenAI chat-completions requests → checked conversations and decoded media.

Accepted (a subset of https://platform.openai.com/docs/api-reference/chat/create):
``messages`` with ``system`` / ``user`` / ``assistant`` roles, content as a string or a list of
parts ``{"type": "text"}``, ``{"type": "image_url", "image_url": {"url": ...}}`` and (as vLLM)
``{"type": "video_url", "video_url": {"url": ...}}``; ``max_tokens`` / ``max_completion_tokens``,
``temperature`` (0 = greedy), ``top_p``, ``seed``, ``stop``, ``n`` (1 only), ``stream``,
``stream_options.include_usage``. Unknown fields are ignored, as OpenAI-compatible servers do.

Media URLs: ``data:<mime>;base64,<data>``; a local path (``/abs/path`` or ``file://``) only when
the server was given a media root and the resolved path lies inside it — for a video, a folder of
extracted frames too (:func:`mmalign.data.media.frame_files`; every frame's header is checked
against the image limits); remote URLs are refused (the server never fetches). Every problem
raises :class:`RequestError` with an HTTP status and a message naming the offending field
(``messages[2].content[1]``).

Images are read exactly as the training loader reads them (:func:`mmalign.data.media.normalize_image`:
EXIF orientation applied, every Pillow mode mapped to 8 bits with its full tonal range,
transparency kept as alpha for :func:`~mmalign.data.media.process_image` to composite). The size
is checked from the header before decoding, with the loader's rule
(:func:`~mmalign.data.media.check_image_size`): ``w · h`` must not exceed ``max_image_pixels``
and ``max(w, h)²`` — the square ``pad`` mode pads to — must not exceed ``max_padded_pixels``, so
a 20000×1 PNG of 140 bytes is a 413, not seconds of work and a gigabyte.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from PIL import Image, UnidentifiedImageError

from mmalign.data.media import MediaError, check_image_size, frame_files, normalize_image

IMAGE_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/jpg", "image/gif", "image/webp", "image/bmp", "image/tiff"}
)
VIDEO_TYPES = frozenset({"video/mp4", "video/webm", "video/quicktime", "video/x-matroska", "video/avi"})
VIDEO_SUFFIX = {".mp4", ".webm", ".mov", ".mkv", ".avi"}
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w-]+=[\w.-]+)*);base64,(.*)$", re.DOTALL)


class RequestError(Exception):
    """A bad request: ``status`` (4xx), a message for the client, the offending ``param``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def to_json(self) -> dict[str, Any]:
        """OpenAI's error body."""
        kind = {401: "authentication_error", 404: "not_found_error", 413: "request_too_large"}
        return {
            "error": {
                "message": self.message,
                "type": kind.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass
class ServeLimits:
    """Safety limits of the server (defaults suit a local demo).

    Attributes:
        max_body_bytes: whole request body.
        max_image_bytes / max_video_bytes: one decoded media item.
        max_image_pixels: bound on one image's ``w × h`` (decompression bombs).
        max_padded_pixels: bound on its padded square ``max(w, h)²`` (extreme aspect ratios,
            which ``pad`` mode would pad to a huge square); the default admits a 8192×2048
            panorama and refuses a 20000×1 strip.
        max_images / max_videos: media items per request (whole conversation).
        max_messages: messages per request.
        max_new_tokens: cap on ``max_tokens`` (larger requests are clamped to it); also the
            default when a request gives none.
        media_root: folder local media paths may come from (None: local paths refused).
    """

    max_body_bytes: int = 64 * 2**20
    max_image_bytes: int = 10 * 2**20
    max_video_bytes: int = 40 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_padded_pixels: int = 8192 * 8192
    max_images: int = 8
    max_videos: int = 2
    max_messages: int = 64
    max_new_tokens: int = 512
    media_root: Path | None = None

    def __post_init__(self) -> None:
        if self.media_root is not None:
            self.media_root = Path(self.media_root).resolve()
            if not self.media_root.is_dir():
                raise ValueError(f"media root {self.media_root} is not a folder")


@dataclass
class ChatRequest:
    """A checked request: messages with media placeholders in the text, media decoded in order."""

    messages: list[dict[str, str]]
    images: list[Image.Image] = field(default_factory=list)
    # (file bytes, suffix) of a video file, or a frame folder under the media root
    videos: list[tuple[bytes, str] | Path] = field(default_factory=list)
    model: str | None = None
    max_new_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False


def _number(body: dict, key: str, lo: float, hi: float, default: float, integer: bool = False) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (integer and not isinstance(value, int))
    ):
        raise RequestError(400, f"'{key}' must be {'an integer' if integer else 'a number'}", key)
    if not lo <= value <= hi:
        raise RequestError(400, f"'{key}' must be in [{lo}, {hi}], got {value}", key)
    return value


def _decode_data_url(url: str, where: str) -> tuple[str, bytes]:
    m = _DATA_URL.match(url)
    if m is None:
        raise RequestError(400, f"{where}: malformed data URL (expected data:<mime>;base64,<data>)", where)
    try:
        data = base64.b64decode(re.sub(r"\s+", "", m.group(3)), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(400, f"{where}: bad base64 in data URL: {exc}", where) from exc
    return (m.group(1) or "application/octet-stream").lower(), data


def _local_file(url: str, where: str, limits: ServeLimits, folder_ok: bool = False) -> Path:
    if limits.media_root is None:
        raise RequestError(
            400, f"{where}: local file paths are disabled on this server (start it with --media-root)", where
        )
    raw = unquote(urlparse(url).path) if url.startswith("file:") else url
    path = Path(raw)
    path = (path if path.is_absolute() else limits.media_root / path).resolve()
    if not path.is_relative_to(limits.media_root):
        raise RequestError(403, f"{where}: path {raw!r} is outside the allowed media root", where)
    if not path.is_file() and not (folder_ok and path.is_dir()):
        raise RequestError(400, f"{where}: no such file under the media root: {raw!r}", where)
    return path


def _media_bytes(url: Any, where: str, limits: ServeLimits, kind: str) -> tuple[str, bytes]:
    """``(mime or suffix, bytes)`` of a media URL, with the size limit checked."""
    if not isinstance(url, str) or not url:
        raise RequestError(400, f"{where}: the {kind} URL must be a non-empty string", where)
    cap = limits.max_image_bytes if kind == "image" else limits.max_video_bytes
    if url.startswith("data:"):
        if len(url) * 3 // 4 > cap + 16:
            raise RequestError(413, f"{where}: {kind} larger than {cap} bytes", where)
        mime, data = _decode_data_url(url, where)
    elif url.startswith(("http://", "https://")):
        raise RequestError(400, f"{where}: remote URLs are not fetched; send the {kind} as a data URL", where)
    else:
        path = _local_file(url, where, limits)
        if path.stat().st_size > cap:
            raise RequestError(413, f"{where}: {kind} larger than {cap} bytes", where)
        mime, data = path.suffix.lower(), path.read_bytes()
    if len(data) > cap:
        raise RequestError(413, f"{where}: {kind} larger than {cap} bytes", where)
    return mime, data


def decode_image(url: Any, where: str, limits: ServeLimits) -> Image.Image:
    """An upright 8-bit ``RGB`` image (``RGBA`` when it has transparency) from a data URL or an
    allowed local path.

    Raises:
        RequestError: 413 too many bytes or pixels (padded square), 415 not a readable image.
    """
    mime, data = _media_bytes(url, where, limits, "image")
    if mime.startswith("video/") or (mime.startswith("image/") and mime not in IMAGE_TYPES):
        raise RequestError(
            415, f"{where}: unsupported image type {mime!r}; send {sorted(IMAGE_TYPES)}", where
        )
    if "/" in mime and not mime.startswith("image/") and mime != "application/octet-stream":
        raise RequestError(415, f"{where}: {mime!r} is not an image", where)
    try:
        with Image.open(io.BytesIO(data)) as img:
            check_image_size(
                img.width, img.height, limits.max_image_pixels, max_padded_pixels=limits.max_padded_pixels
            )
            img.load()
            return normalize_image(img)
    except (MediaError, Image.DecompressionBombError) as exc:
        raise RequestError(413, f"{where}: {exc}", where) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise RequestError(415, f"{where}: the data is not a readable image ({exc})", where) from exc


def _frame_folder(folder: Path, where: str, limits: ServeLimits) -> Path:
    """A frame folder whose every frame is an image within the image limits (headers only)."""
    try:
        frames = frame_files(folder)
    except MediaError as exc:
        raise RequestError(415, f"{where}: {exc}", where) from exc
    for frame in frames:
        try:
            with Image.open(frame) as img:
                check_image_size(
                    img.width, img.height, limits.max_image_pixels, max_padded_pixels=limits.max_padded_pixels
                )
        except (MediaError, Image.DecompressionBombError) as exc:
            raise RequestError(413, f"{where}: frame {frame.name}: {exc}", where) from exc
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise RequestError(
                415, f"{where}: frame {frame.name} is not a readable image ({exc})", where
            ) from exc
    return folder


def decode_video(url: Any, where: str, limits: ServeLimits) -> tuple[bytes, str] | Path:
    """Video file bytes and a file suffix (decoded later, by the engine, with decord), or a
    folder of extracted frames under the media root (read later, by the engine)."""
    if isinstance(url, str) and url and not url.startswith(("data:", "http://", "https://")):
        path = _local_file(url, where, limits, folder_ok=True)
        if path.is_dir():
            return _frame_folder(path, where, limits)
    mime, data = _media_bytes(url, where, limits, "video")
    if mime.startswith("."):
        if mime not in VIDEO_SUFFIX:
            raise RequestError(415, f"{where}: unsupported video file type {mime!r}", where)
        return data, mime
    if mime not in VIDEO_TYPES:
        raise RequestError(
            415, f"{where}: unsupported video type {mime!r}; send {sorted(VIDEO_TYPES)}", where
        )
    return data, {"video/quicktime": ".mov", "video/x-matroska": ".mkv"}.get(mime, "." + mime.split("/")[1])


def _content(
    content: Any, where: str, placeholders: tuple[str, str], limits: ServeLimits, req: ChatRequest
) -> str:
    """Text of one message with one placeholder per media part (media appended to ``req``)."""
    image_tok, video_tok = placeholders
    if isinstance(content, str):
        parts: list[Any] = [{"type": "text", "text": content}]
    elif isinstance(content, list):
        parts = content
    else:
        raise RequestError(400, f"{where}: content must be a string or a list of parts", where)
    out: list[str] = []
    for j, part in enumerate(parts):
        at = f"{where}[{j}]" if isinstance(content, list) else where
        if not isinstance(part, dict):
            raise RequestError(400, f"{at}: a content part must be an object", at)
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise RequestError(400, f"{at}: 'text' must be a string", at)
            for tok in (image_tok, video_tok):
                if tok and tok in text:
                    raise RequestError(
                        400, f"{at}: text must not contain {tok}; send media as content parts", at
                    )
            out.append(text)
        elif kind in ("image_url", "video_url"):
            spec = part.get(kind)
            url = spec.get("url") if isinstance(spec, dict) else spec
            if kind == "image_url":
                req.images.append(decode_image(url, at, limits))
                out.append(image_tok + "\n")
            else:
                if not video_tok:
                    raise RequestError(400, f"{at}: this model takes no video", at)
                req.videos.append(decode_video(url, at, limits))
                out.append(video_tok + "\n")
        else:
            raise RequestError(
                400, f"{at}: unsupported content part type {kind!r} (text, image_url, video_url)", at
            )
        if len(req.images) > limits.max_images:
            raise RequestError(400, f"more than {limits.max_images} images in one request", at)
        if len(req.videos) > limits.max_videos:
            raise RequestError(400, f"more than {limits.max_videos} videos in one request", at)
    return "".join(out)


def parse_chat_request(body: Any, placeholders: tuple[str, str], limits: ServeLimits) -> ChatRequest:
    """Check an OpenAI chat-completions body and decode its media.

    Args:
        body: the parsed JSON.
        placeholders: the model's image and video tokens (``""`` for no video support).

    Consecutive messages of one role are joined (templates need user/assistant alternation).
    """
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list", "messages")
    if len(messages) > limits.max_messages:
        raise RequestError(400, f"more than {limits.max_messages} messages", "messages")
    _number(body, "n", 1, 1, 1, integer=True)  # one choice per request
    req = ChatRequest(messages=[])
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise RequestError(400, f"{where}: a message must be an object", where)
        role = msg.get("role")
        role = "system" if role == "developer" else role
        if role not in ("system", "user", "assistant"):
            raise RequestError(
                400, f"{where}: unsupported role {role!r} (system, user, assistant)", f"{where}.role"
            )
        before = len(req.images) + len(req.videos)
        text = _content(msg.get("content"), f"{where}.content", placeholders, limits, req)
        if role != "user" and len(req.images) + len(req.videos) > before:
            raise RequestError(400, f"{where}: only user messages may hold media", where)
        if req.messages and req.messages[-1]["role"] == role:
            req.messages[-1]["content"] += "\n" + text
        else:
            req.messages.append({"role": role, "content": text})
    roles = [m["role"] for m in req.messages]
    if "system" in roles[1:]:
        raise RequestError(400, "a system message may only open the conversation", "messages")
    if roles[-1] != "user":
        raise RequestError(400, "the last message must come from the user", "messages")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(400, "'model' must be a string", "model")
    req.model = model
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    req.max_new_tokens = min(
        _number(body, key, 1, 2**31, limits.max_new_tokens, integer=True), limits.max_new_tokens
    )
    req.temperature = float(_number(body, "temperature", 0.0, 2.0, 1.0))
    req.top_p = float(_number(body, "top_p", 0.0, 1.0, 1.0))
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(400, "'seed' must be an integer", "seed")
    req.seed = seed
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise RequestError(400, "'stop' must be a string or a list of up to 4 non-empty strings", "stop")
    req.stop = stop
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be a boolean", "stream")
    req.stream = stream
    opts = body.get("stream_options") or {}
    req.include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
    return req
