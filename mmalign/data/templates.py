"""Conversation templates and assistant-only label masks.

The tokenizer's own ``chat_template`` is used when it has one; otherwise (or when asked) one of
the built-ins below, written as Jinja so that both paths render through
``tokenizer.apply_chat_template``:

* ``vicuna_v1`` — LLaVA-1.5's ``conv_vicuna_v1``: ``SYSTEM USER: q ASSISTANT: a</s>USER: ...``
* ``llama3`` — ``<|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>``
* ``chatml`` — ``<|im_start|>role\\ncontent<|im_end|>\\n``
* ``plain`` — ``question`` directly followed by ``answer</s>``: no role markers (the tiny preset)

A template override (the ``template`` key of the trainers' configs, ``--template`` of the eval and
chat CLIs) is a built-in name, a path to a Jinja file, or Jinja source.

**Content shapes.** mmalign's messages hold strings with ``<image>``/``<video>`` placeholders.
Many published templates (llava-hf's among them) instead iterate over *typed* content parts
(``{"type": "text", "text": ...}``, ``{"type": "image"}``) and print nothing for a string.
:func:`load_template` finds out which shape a template reads by rendering a probe word both ways;
for a typed template each message is converted (:func:`to_typed_content`): every placeholder
becomes an image/video part in place, the text between them a text part. Every rendering is then
checked (:func:`check_rendering`): each text piece of each message must appear in the output, in
order, and the output must hold as many placeholders as the messages — a template that drops text
or renders an image part as something other than the model's placeholder token is an error naming
the template, never a silently shorter prompt.

Labels: every assistant turn (its content and the end-of-turn text that follows it) is a target;
everything else is ``-100``. The assistant spans are found by rendering the conversation up to
each assistant turn with and without it — which works for any template, built-in or not (the
typed conversion is per message, so prefixes stay prefixes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

BUILTIN_TEMPLATES: dict[str, str] = {
    "vicuna_v1": (
        "{{ bos_token }}"
        "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
        "{% set loop_messages = messages[1:] %}"
        "{% else %}{% set system = '" + VICUNA_SYSTEM.replace("'", "\\'") + "' %}"
        "{% set loop_messages = messages %}{% endif %}"
        "{{ system }} "
        "{% for m in loop_messages %}"
        "{% if m['role'] == 'user' %}USER: {{ m['content'] }} "
        "{% else %}ASSISTANT: {{ m['content'] }}{{ eos_token }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}"
        "{% for m in messages %}"
        "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
    # No role markers: the answer follows the user's text directly (multi-turn: turns are joined,
    # each assistant turn closed by eos). Used by the tiny ShapeWorld preset, where a question that
    # ends on the queried word then has its answer predicted at that word (see WorldConfig.question_style).
    "plain": (
        "{% for m in messages %}{{ m['content'] }}"
        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    ),
    "chatml": (
        "{% for m in messages %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
}

ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}

Message = dict[str, str]

PLACEHOLDERS = ("<image>", "<video>")
_PROBE_USER, _PROBE_ASSISTANT = "mmalignprobequestion", "mmalignprobeanswer"


@dataclass(frozen=True)
class ChatTemplate:
    """A resolved chat template: its Jinja source and the content shape it reads.

    Attributes:
        source: the Jinja text.
        name: where it came from (a built-in name, a file path, ``tokenizer``, ``inline``), for
            error messages.
        typed: the template iterates over typed content parts (llava-hf style) rather than
            printing a string.
        placeholders: the model's ``(image, video)`` placeholder tokens.
    """

    source: str
    name: str
    typed: bool
    placeholders: tuple[str, ...] = PLACEHOLDERS


def _is_jinja(value: str) -> bool:
    return "{{" in value or "{%" in value


def template_setting(value: str | None) -> str | None:
    """A ``template`` override as stored in a model config: a built-in name, or Jinja source.

    ``value`` may be a built-in name, a path to a Jinja file (read here, so that a checkpoint
    records the template itself, not a path) or Jinja source (``{{``/``{%``).

    Raises:
        ValueError: neither a built-in name, nor an existing file, nor Jinja source.
    """
    if value is None or value in BUILTIN_TEMPLATES or _is_jinja(value):
        return value
    path = Path(value)
    if path.is_file():
        return path.read_text()
    raise ValueError(
        f"unknown template {value!r}: not a built-in ({', '.join(sorted(BUILTIN_TEMPLATES))}), "
        "not a Jinja file and not Jinja source"
    )


def _source_and_name(tokenizer: Any, name: str | None) -> tuple[str, str]:
    if name is not None:
        if name in BUILTIN_TEMPLATES:
            return BUILTIN_TEMPLATES[name], name
        source = template_setting(name)
        assert source is not None
        return source, ("inline template" if _is_jinja(name) else name)
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, str) and own:
        return own, "the tokenizer's chat_template"
    return BUILTIN_TEMPLATES["vicuna_v1"], "vicuna_v1"


def resolve_template(tokenizer: Any, name: str | None = None) -> str:
    """The Jinja template to use: ``name`` if given (built-in, file or Jinja source), else the
    tokenizer's, else ``vicuna_v1``.

    Raises:
        ValueError: ``name`` is none of those.
    """
    return _source_and_name(tokenizer, name)[0]


def _apply(tokenizer: Any, source: str, messages: list[Any], add_generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(
        messages, chat_template=source, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    if not isinstance(text, str):  # some versions wrap a single rendering in a list
        text = text[0]
    return text


def _keeps_probe(tokenizer: Any, source: str, messages: list[Any]) -> bool:
    try:
        text = _apply(tokenizer, source, messages, add_generation_prompt=False)
    except Exception:  # a template written for the other shape may fail on this one
        return False
    return _PROBE_USER in text


def load_template(
    tokenizer: Any, name: str | None = None, placeholders: tuple[str, ...] = PLACEHOLDERS
) -> ChatTemplate:
    """Resolve a template (see :func:`resolve_template`) and find the content shape it reads.

    A template reads strings if a user turn's string probe survives its rendering; else typed
    parts if a ``[{"type": "text", "text": probe}]`` probe does. A user + assistant probe
    conversation is then rendered in that shape and checked (:func:`check_rendering`).

    Raises:
        ValueError: the template drops the user's text in both shapes, or drops the probe
            conversation's text in its shape (naming the template).
    """
    source, label = _source_and_name(tokenizer, name)
    turns = [("user", _PROBE_USER), ("assistant", _PROBE_ASSISTANT)]
    probe = [{"role": r, "content": t} for r, t in turns]
    if _keeps_probe(tokenizer, source, probe):
        template = ChatTemplate(source, label, False, tuple(placeholders))
    elif _keeps_probe(tokenizer, source, to_typed_content(probe)):
        template = ChatTemplate(source, label, True, tuple(placeholders))
    else:
        raise ValueError(
            f"chat template ({label}) drops the user's text whether the content is a string or typed "
            "parts; set `template` to a built-in (vicuna_v1, llama3, chatml, plain) or a Jinja file"
        )
    render(tokenizer, template, probe, add_generation_prompt=False)  # raises if text is dropped
    return template


def _split(content: str, placeholders: tuple[str, ...]) -> list[tuple[str, str]]:
    """``"<image>\\nWhat?"`` → ``[("image", ""), ("text", "What?")]``: placeholders in place, text
    between them stripped (empty pieces dropped)."""
    kinds = {p: ("image", "video")[i] for i, p in enumerate(placeholders) if p}
    if not kinds:
        return [("text", content.strip())] if content.strip() else []
    pattern = re.compile("(" + "|".join(re.escape(p) for p in kinds) + ")")
    out: list[tuple[str, str]] = []
    for piece in pattern.split(content):
        if piece in kinds:
            out.append((kinds[piece], ""))
        elif piece.strip():
            out.append(("text", piece.strip()))
    return out


def to_typed_content(messages: list[Message], placeholders: tuple[str, ...] = PLACEHOLDERS) -> list[dict]:
    """Messages with string content → messages with typed parts (``{"type": "image"}`` for each
    image placeholder in place, ``{"type": "text", "text": ...}`` for the text between)."""
    out = []
    for m in messages:
        parts = [
            {"type": kind, "text": text} if kind == "text" else {"type": kind}
            for kind, text in _split(m["content"], placeholders)
        ]
        out.append({**m, "content": parts})
    return out


def check_rendering(text: str, messages: list[Message], template: ChatTemplate) -> None:
    """Every text piece of every message is in ``text`` in order; placeholders are all there.

    Raises:
        ValueError: naming the template and the missing text (or the placeholder counts).
    """
    at = 0
    for i, m in enumerate(messages):
        for kind, piece in _split(m["content"], template.placeholders):
            if kind != "text":
                continue
            found = text.find(piece, at)
            if found < 0:
                raise ValueError(
                    f"chat template ({template.name}) drops text of message {i} ({m['role']}): "
                    f"{piece[:80]!r} is not in the rendering {text[:200]!r}; set `template` to a "
                    "template that renders it"
                )
            at = found + len(piece)
    for placeholder in template.placeholders:
        if not placeholder:
            continue
        wanted = sum(m["content"].count(placeholder) for m in messages)
        got = text.count(placeholder)
        if got != wanted:
            how = "typed media parts" if template.typed else "the text"
            raise ValueError(
                f"chat template ({template.name}) renders {got} {placeholder} for {wanted} in {how}: "
                f"a media part must render as the model's placeholder token {placeholder}; set "
                "`template` to one that does"
            )


def render(
    tokenizer: Any, template: str | ChatTemplate, messages: list[Message], add_generation_prompt: bool
) -> str:
    """Render messages to text (no tokenisation), in the content shape the template reads.

    Args:
        template: a :class:`ChatTemplate` (from :func:`load_template`), or Jinja source (its shape
            is then probed on each call).

    Raises:
        ValueError: the rendering drops text or placeholders (:func:`check_rendering`).
    """
    if isinstance(template, str):
        template = load_template(tokenizer, template)
    shaped = to_typed_content(messages, template.placeholders) if template.typed else messages
    text = _apply(tokenizer, template.source, shaped, add_generation_prompt)
    check_rendering(text, messages, template)
    return text


def validate_messages(messages: list[Message], sample_id: str) -> None:
    """Roles must be user/assistant (optionally one leading system), alternating, user first."""
    if not messages:
        raise ValueError(f"sample {sample_id}: empty conversation")
    body = messages[1:] if messages[0]["role"] == "system" else messages
    for i, m in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ValueError(
                f"sample {sample_id}: turn {i} is from {m['role']!r}, expected {expected!r} "
                "(conversations alternate human/gpt, starting with human)"
            )


def assistant_spans(
    tokenizer: Any, template: str | ChatTemplate, messages: list[Message]
) -> tuple[str, list[tuple[int, int]]]:
    """Render a full conversation and locate each assistant turn in it.

    Returns:
        ``(text, spans)``: the rendered text and ``[start, end)`` character spans covering each
        assistant turn's content and its end-of-turn marker.

    Raises:
        ValueError: the template renders a prefix that is not a prefix of the full conversation
            (then assistant turns cannot be located reliably), or drops text (:func:`render`).
    """
    if isinstance(template, str):
        template = load_template(tokenizer, template)
    full = render(tokenizer, template, messages, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, template, messages[:i], add_generation_prompt=True)
        through = render(tokenizer, template, messages[: i + 1], add_generation_prompt=False)
        if not full.startswith(through) or not through.startswith(before):
            raise ValueError(
                "the chat template does not render conversations prefix-consistently; "
                "choose a built-in template (vicuna_v1, llama3, chatml)"
            )
        spans.append((len(before), len(through)))
    return full, spans
