"""``--dry-run`` of the trainers: the first records as the model will see them, without DeepSpeed.

Each record is tokenised exactly as training does (template, media placeholders expanded, max
length) and printed back as text: target tokens (those the loss is computed on) inside
``[[...]]``, each run of media feature tokens as ``<image×N>`` / ``<video×N>``, followed by the
token, target and media counts. Media files are not read, and the data are loaded as the
trainers' ``load_mixture`` / ``load_sources`` do (the trainers' load-time dataset checks are not
run). A reward model's ``reward_prompt`` suffix is not shown.
"""

from __future__ import annotations

from typing import Any

from mmalign.data.processor import MultimodalProcessor


def mark_tokens(tokenizer: Any, ids: list[int], targets: list[bool], media: dict[int, str]) -> str:
    """Decode ``ids`` run by run: targets in ``[[...]]``, media feature tokens as ``<name×count>``.

    Args:
        ids: token ids (media placeholders already expanded).
        targets: per token, whether it is a loss target.
        media: placeholder token id → its text (``<image>``).
    """
    out: list[str] = []
    i = 0
    while i < len(ids):
        j = i
        if ids[i] in media:
            while j < len(ids) and ids[j] == ids[i]:
                j += 1
            out.append(f"{media[ids[i]][:-1]}×{j - i}>")
        else:
            while j < len(ids) and ids[j] not in media and targets[j] == targets[i]:
                j += 1
            text = tokenizer.decode(ids[i:j], skip_special_tokens=False)
            out.append(f"[[{text}]]" if targets[i] else text)
        i = j
    return "".join(out)


def _media_ids(processor: MultimodalProcessor) -> dict[int, str]:
    cfg = processor.cfg
    media = {cfg.image_token_id: cfg.image_token}
    if cfg.video_token_id >= 0:
        media[cfg.video_token_id] = cfg.video_token
    return media


def _counts(ids: list[int], targets: list[bool], media: dict[int, str]) -> str:
    per = ", ".join(f"{sum(t == k for t in ids)} {v} tokens" for k, v in media.items() if k in ids)
    return f"{len(ids)} tokens, {sum(targets)} targets" + (f", {per}" if per else "")


def render_examples(
    processor: MultimodalProcessor, examples: list[Any], n: int, max_length: int | None
) -> str:
    """SFT records (:class:`~mmalign.data.formats.Example`) as text with targets marked."""
    media = _media_ids(processor)
    blocks = []
    for e in examples[:n]:
        ids, labels = processor.tokenize_conversation(
            e.messages, len(e.images), len(e.videos), e.id, max_length
        )
        targets = [lab >= 0 for lab in labels]
        head = f"--- {e.id} ({e.where or 'in code'}): {len(e.images)} image(s), {len(e.videos)} video(s); "
        blocks.append(
            head + _counts(ids, targets, media) + "\n" + mark_tokens(processor.tokenizer, ids, targets, media)
        )
    return "\n".join(blocks)


def render_pairs(processor: MultimodalProcessor, pairs: list[Any], n: int, max_length: int | None) -> str:
    """Preference pairs: the prompt, then each response with its scored tokens marked."""
    from mmalign.preference.batch import encode_pair

    media = _media_ids(processor)
    blocks = []
    for p in pairs[:n]:
        enc = encode_pair(processor, p, max_length, load_media=False)
        prompt = mark_tokens(processor.tokenizer, enc.prompt_ids, [False] * len(enc.prompt_ids), media)
        lines = [
            f"--- {p.id} ({p.where or 'in code'}): {len(p.images)} image(s), {len(p.videos)} video(s); prompt "
            + _counts(enc.prompt_ids, [False] * len(enc.prompt_ids), media),
            prompt,
        ]
        for name, ids, scored in zip(("chosen", "rejected"), enc.responses, enc.scored, strict=False):
            lines.append(
                f"  {name} ({len(ids)} tokens, {sum(scored)} scored): "
                + mark_tokens(processor.tokenizer, ids, scored, media)
            )
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def dry_run(cfg: Any, n: int, kind: str) -> int:
    """Load the start checkpoint and the data of a trainer's config, print ``n`` records, return 0.

    Args:
        cfg: an ``SFTConfig`` (``kind="sft"``) or a preference config (``kind="pairs"``).
        n: records to render.
    """
    from mmalign.models.checkpoint import load_model

    model, tokenizer = load_model(cfg.model, template=cfg.template)
    processor = MultimodalProcessor.for_model(model, tokenizer)
    print(
        f"[dry-run] {cfg.model}: template {processor.template.name} "
        f"({'typed' if processor.template.typed else 'string'} content), "
        f"{model.image_tokens} tokens per image, {model.video_tokens} per video"
    )
    if kind == "sft":
        from mmalign.data.datasets import load_mixture

        examples = load_mixture(cfg.data)
        print(f"[dry-run] {len(examples)} examples; the first {min(n, len(examples))}:")
        print(render_examples(processor, examples, n, cfg.max_length))
    else:
        from mmalign.preference.config import load_sources

        pairs = load_sources(cfg.data)
        print(f"[dry-run] {len(pairs)} pairs; the first {min(n, len(pairs))}:")
        print(render_pairs(processor, pairs, n, cfg.max_length))
    return 0
