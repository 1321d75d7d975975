"""The LLM generator back-end of the builders: prompt files, JSON replies, validation, concurrency.

Requests go through the one OpenAI-compatible client of the project (:mod:`mmalign.llm.client`):
concurrency, retries with back-off, and a ``validate`` hook that re-asks when a reply is unusable.
Prompts are ``str.format`` templates in ``configs/prompts/`` (literal braces doubled). A record
whose every reply failed validation becomes an entry of the builder's error report; an endpoint
that fails for good (HTTP 4xx, connection refused after all retries) stops the run, which then
resumes from its last commit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mmalign.llm.client import ChatClient, LLMConfig, user_message

T = TypeVar("T")
PROMPTS_DIR = Path(__file__).resolve().parents[2] / "configs" / "prompts"
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def load_prompt(name_or_path: str | Path) -> str:
    """A prompt template: a file path, or a name in ``configs/prompts/`` (``.txt`` optional)."""
    path = Path(name_or_path)
    if not path.is_file():
        path = PROMPTS_DIR / (path.name if path.suffix else f"{path.name}.txt")
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {name_or_path} (looked in {PROMPTS_DIR})")
    return path.read_text().strip()


def parse_json_reply(text: str) -> Any:
    """The JSON value in a reply: a fenced block if any, else from the first ``[``/``{`` to the last ``]``/``}``.

    Raises:
        ValueError: no JSON value found.
    """
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    starts = [i for i in (body.find("["), body.find("{")) if i >= 0]
    if not starts:
        raise ValueError("no JSON in the reply")
    start = min(starts)
    end = max(body.rfind("]"), body.rfind("}"))
    try:
        return json.loads(body[start : end + 1])
    except json.JSONDecodeError as exc:
        raise ValueError(f"reply is not valid JSON: {exc.msg}") from exc


@dataclass
class Request:
    """One prompt to send: its text and the images (paths) to attach as data URLs."""

    text: str
    images: Sequence[str | Path] = ()


class LLMBackend:
    """Sends batches of requests to one endpoint; ``None`` for a request whose replies all failed validation.

    Args:
        client: the chat client (endpoint, concurrency, retries).
        send_images: attach images (for multimodal endpoints); False sends text only.
    """

    def __init__(self, client: ChatClient, send_images: bool = True) -> None:
        self.client = client
        self.send_images = send_images

    @classmethod
    def from_args(
        cls,
        base_url: str | None,
        model: str | None,
        concurrency: int = 4,
        max_retries: int = 4,
        timeout: float = 120.0,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        send_images: bool = True,
    ) -> LLMBackend:
        """Endpoint from the arguments, else ``MMALIGN_LLM_BASE_URL``/``MMALIGN_LLM_MODEL``; key from the environment."""
        cfg = LLMConfig.from_env(
            base_url,
            model,
            concurrency=concurrency,
            max_retries=max_retries,
            timeout=timeout,
            temperature=temperature,
            max_tokens=max_tokens,
        )
        return cls(ChatClient(cfg), send_images)

    def ask_many(
        self, requests: Sequence[Request], validate: Callable[[str], T] | Sequence[Callable[[str], T]]
    ) -> list[T | None]:
        """Validated replies in request order (None where every try was invalid).

        Args:
            validate: one hook for all replies, or one per request.
        """
        convs = []
        for r in requests:
            images = list(r.images) if self.send_images else []
            convs.append([user_message(r.text, images)])
        return self.client.chat_many(convs, validate=validate, on_invalid="none")  # type: ignore[return-value]


def no_reply(client: ChatClient) -> ValueError:
    """The error recorded for a record whose replies all failed validation."""
    return ValueError(
        f"LLM {client.config.model} gave no valid reply after {client.config.max_retries + 1} tries"
    )
