"""One client for every OpenAI-compatible ``/chat/completions`` endpoint (judges and data builders).

Works with OpenAI, vLLM, SGLang, llama.cpp's server, Ollama and mmalign's own demo server
(``python eval/chat.py serve``). Only the standard library is used (``urllib``), so the data
builders and judges need no extra package.

- Endpoint from the environment: ``MMALIGN_LLM_BASE_URL`` (else ``OPENAI_BASE_URL``),
  ``MMALIGN_LLM_MODEL``, ``MMALIGN_LLM_API_KEY`` (else ``OPENAI_API_KEY``); explicit arguments win.
- Images travel as base64 data URLs (:func:`image_part`).
- :meth:`ChatClient.chat_many` runs requests concurrently (a thread pool of ``concurrency``).
- Transient failures (connection errors, timeouts, 408/409/429/5xx) are retried with exponential
  back-off and jitter, honouring ``Retry-After``; other 4xx fail at once with the server's message.
- ``validate``: a hook ``text -> value`` that raises ``ValueError`` on an unusable response (e.g. a
  judge answer without a rating); the request is retried, and the last error is raised (or, with
  ``on_invalid="none"`` in :meth:`chat_many`, ``None`` is returned for that item).
"""

from __future__ import annotations

import base64
import io
import json
import mimetypes
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
Message = dict[str, Any]
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class LLMError(RuntimeError):
    """A request that failed for good; ``status`` is the HTTP status (None for transport errors)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class InvalidResponse(LLMError):
    """Every try returned a response that ``validate`` rejected (or that had no text)."""


@dataclass
class LLMConfig:
    """Where and how to call the endpoint.

    Attributes:
        base_url: API root including ``/v1`` (e.g. ``http://127.0.0.1:8000/v1``).
        model: model name sent in each request.
        api_key: bearer token (None: no ``Authorization`` header).
        temperature / max_tokens: sampling defaults of every request (overridable per call).
        timeout: seconds per HTTP request.
        max_retries: retries after the first try (transient errors and invalid responses).
        backoff: first back-off in seconds; doubles each retry, capped by ``max_backoff``.
        concurrency: parallel requests in :meth:`ChatClient.chat_many`.
        extra_body: merged into every request body (e.g. ``{"seed": 0}``).
    """

    base_url: str
    model: str
    api_key: str | None = None
    temperature: float = 0.0
    max_tokens: int = 512
    timeout: float = 120.0
    max_retries: int = 4
    backoff: float = 1.0
    max_backoff: float = 30.0
    concurrency: int = 4
    extra_body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"LLM base_url must start with http:// or https://, got {self.base_url!r}")
        self.base_url = self.base_url.rstrip("/")
        if not self.model:
            raise ValueError("LLM model name is empty")
        if self.max_retries < 0 or self.concurrency < 1 or self.timeout <= 0:
            raise ValueError("need max_retries ≥ 0, concurrency ≥ 1, timeout > 0")

    @classmethod
    def from_env(cls, base_url: str | None = None, model: str | None = None, **kwargs: Any) -> LLMConfig:
        """Fill ``base_url``/``model``/``api_key`` from the environment where not given.

        Raises:
            ValueError: no base URL or no model name, naming the variables to set.
        """
        env = os.environ
        base_url = base_url or env.get("MMALIGN_LLM_BASE_URL") or env.get("OPENAI_BASE_URL")
        model = model or env.get("MMALIGN_LLM_MODEL")
        if not base_url or not model:
            raise ValueError(
                "no LLM endpoint: set MMALIGN_LLM_BASE_URL (or OPENAI_BASE_URL) and MMALIGN_LLM_MODEL, "
                "or pass base_url and model"
            )
        kwargs.setdefault("api_key", env.get("MMALIGN_LLM_API_KEY") or env.get("OPENAI_API_KEY"))
        return cls(base_url=base_url, model=model, **kwargs)


def image_part(image: str | Path | Any, detail: str | None = None) -> dict[str, Any]:
    """An ``image_url`` content part holding the image as a base64 data URL.

    Args:
        image: a file path (sent as stored, MIME type from the suffix) or a PIL image (sent as PNG).
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        data = path.read_bytes()
    else:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        mime, data = "image/png", buf.getvalue()
    url: dict[str, Any] = {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}
    if detail:
        url["detail"] = detail
    return {"type": "image_url", "image_url": url}


def user_message(text: str, images: Sequence[str | Path | Any] = ()) -> Message:
    """A user message: images first (as data URLs), then the text; plain text when no image."""
    if not images:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [*(image_part(i) for i in images), {"type": "text", "text": text}]}


class ChatClient:
    """Thread-safe client of one OpenAI-compatible endpoint (see module docstring)."""

    def __init__(self, config: LLMConfig) -> None:
        self.config = config

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        req = urllib.request.Request(
            f"{self.config.base_url}/chat/completions",
            data=json.dumps(body).encode(),
            headers=headers,
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=self.config.timeout) as resp:
            return json.loads(resp.read())

    def _sleep(self, attempt: int, retry_after: str | None = None) -> None:
        delay = min(self.config.backoff * 2**attempt, self.config.max_backoff)
        if retry_after and retry_after.replace(".", "", 1).isdigit():
            delay = min(max(delay, float(retry_after)), self.config.max_backoff)
        time.sleep(delay * (0.5 + random.random() / 2))

    def complete(self, messages: Sequence[Message], **params: Any) -> dict[str, Any]:
        """POST one request (with retries on transient errors) and return the response JSON."""
        body = {
            "model": self.config.model,
            "messages": list(messages),
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            **self.config.extra_body,
            **params,
        }
        last: LLMError | None = None
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self._sleep(attempt - 1, getattr(last, "retry_after", None))
            try:
                return self._post(body)
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")[:500]
                last = LLMError(f"{self.config.base_url}: HTTP {exc.code}: {detail}", exc.code)
                last.retry_after = exc.headers.get("Retry-After")  # type: ignore[attr-defined]
                if exc.code not in RETRY_STATUS:
                    raise last from exc
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as exc:
                last = LLMError(f"{self.config.base_url}: {type(exc).__name__}: {exc}")
        raise LLMError(
            f"gave up after {self.config.max_retries + 1} tries: {last}", last.status if last else None
        )

    def chat(
        self,
        messages: Sequence[Message],
        validate: Callable[[str], T] | None = None,
        **params: Any,
    ) -> T | str:
        """The assistant's text for ``messages``; with ``validate``, its parsed value.

        A response that fails ``validate`` (raises ``ValueError``) or has no text is retried up to
        ``max_retries`` times; then :class:`LLMError` names the last problem.
        """
        problem = ""
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self._sleep(attempt - 1)
            resp = self.complete(messages, **params)
            try:
                text = resp["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                problem = f"malformed response (no choices[0].message.content): {str(resp)[:200]}"
                continue
            if not isinstance(text, str):
                problem = "response content is not a string"
                continue
            if validate is None:
                return text
            try:
                return validate(text)
            except ValueError as exc:
                problem = f"invalid response {text[:200]!r}: {exc}"
        raise InvalidResponse(
            f"{self.config.base_url}: no valid response after {self.config.max_retries + 1} tries: {problem}"
        )

    def chat_many(
        self,
        conversations: Sequence[Sequence[Message]],
        validate: Callable[[str], T] | Sequence[Callable[[str], T]] | None = None,
        on_invalid: Literal["raise", "none"] = "raise",
        progress: bool = False,
        desc: str = "llm",
        **params: Any,
    ) -> list[T | str | None]:
        """:meth:`chat` over many conversations, ``concurrency`` at a time, results in input order.

        Args:
            validate: one hook for every conversation, or a sequence of hooks, one per conversation.
            on_invalid: for a conversation whose every response failed ``validate``: ``"raise"``
                re-raises, ``"none"`` puts ``None`` in its place. HTTP and transport failures always raise.
        """
        if isinstance(validate, Sequence):
            if len(validate) != len(conversations):
                raise ValueError(f"{len(validate)} validate hooks for {len(conversations)} conversations")
            hooks = list(validate)
        else:
            hooks = [validate] * len(conversations)

        def one(msgs: Sequence[Message], hook: Callable[[str], T] | None) -> T | str | None:
            try:
                return self.chat(msgs, hook, **params)
            except InvalidResponse:
                if on_invalid == "none":
                    return None
                raise

        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            results = pool.map(one, conversations, hooks)
            return list(tqdm(results, total=len(conversations), desc=desc, disable=not progress, leave=False))
