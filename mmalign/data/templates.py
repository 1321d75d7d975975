"""Conversation templates and assistant-only label masks.

The tokenizer's own ``chat_template`` is used when it has one; otherwise (or when asked) one of
the built-ins below, written as Jinja so that both paths render through
``tokenizer.apply_chat_template``:

* ``vicuna_v1`` — LLaVA-1.5's ``conv_vicuna_v1``: ``SYSTEM USER: q ASSISTANT: a</s>USER: ...``
* ``llama3`` — ``<|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>``
* ``chatml`` — ``<|im_start|>role\\ncontent<|im_end|>\\n``
* ``plain`` — ``question`` directly followed by ``answer</s>``: no role markers (the tiny preset)

Labels: every assistant turn (its content and the end-of-turn text that follows it) is a target;
everything else is ``-100``. The assistant spans are found by rendering the conversation up to
each assistant turn with and without it — which works for any template, built-in or not.
"""

from __future__ import annotations

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


def resolve_template(tokenizer: Any, name: str | None = None) -> str:
    """The Jinja template to use: ``name`` if given, else the tokenizer's, else ``vicuna_v1``."""
    if name is not None:
        if name not in BUILTIN_TEMPLATES:
            raise ValueError(f"unknown template {name!r}; built-ins: {sorted(BUILTIN_TEMPLATES)}")
        return BUILTIN_TEMPLATES[name]
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, str) and own:
        return own
    return BUILTIN_TEMPLATES["vicuna_v1"]


def render(tokenizer: Any, template: str, messages: list[Message], add_generation_prompt: bool) -> str:
    """Render messages to text with ``template`` (no tokenisation)."""
    text = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    if not isinstance(text, str):  # some versions wrap a single rendering in a list
        text = text[0]
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
    tokenizer: Any, template: str, messages: list[Message]
) -> tuple[str, list[tuple[int, int]]]:
    """Render a full conversation and locate each assistant turn in it.

    Returns:
        ``(text, spans)``: the rendered text and ``[start, end)`` character spans covering each
        assistant turn's content and its end-of-turn marker.

    Raises:
        ValueError: the template renders a prefix that is not a prefix of the full conversation
            (then assistant turns cannot be located reliably).
    """
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
