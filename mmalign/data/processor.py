"""From an :class:`~mmalign.data.formats.Example` to model inputs, and batches of them.

Steps: render the conversation with the template → tokenise once with character offsets →
targets are the tokens inside assistant spans → each ``<image>`` (``<video>``) token is expanded
into the number of feature tokens the encoder produces (N for an image, T·N' for a video). The
number of placeholders must equal the number of media items of the example; otherwise the error
names the example.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import torch

from mmalign.data.formats import Example, RecordError
from mmalign.data.media import load_image, load_video_frames, process_image, process_video
from mmalign.data.templates import Message, assistant_spans, load_template, render, validate_messages
from mmalign.utils import IGNORE_INDEX

if TYPE_CHECKING:  # a type hint only: data does not import models (models import data)
    from mmalign.models.lmm import LMMConfig

END_OF_TURN_MARKERS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>")


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Ids that end an assistant turn: EOS plus any end-of-turn marker the vocabulary holds."""
    vocab = tokenizer.get_vocab()
    ids = [vocab[m] for m in END_OF_TURN_MARKERS if m in vocab]
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return sorted(set(ids))


@contextmanager
def record_context(record: Any) -> Iterator[None]:
    """Re-raise a ``ValueError`` / ``OSError`` met while processing ``record`` as a
    :class:`RecordError` naming its ``file:line`` (``record.where``) and id — so that a rank
    failing mid-run says which record of which file."""
    try:
        yield
    except RecordError:
        raise
    except (ValueError, OSError) as exc:
        where = getattr(record, "where", "") or "record"
        raise RecordError(f"{where} (id {record.id}): {exc}") from exc


class MultimodalProcessor:
    """Tokenises conversations with media placeholders and loads their pixels.

    Args:
        tokenizer: a Hugging Face tokenizer holding the image/video tokens.
        cfg: the model's :class:`LMMConfig` (token ids, frames, pixel processing, template).
        image_tokens: feature tokens per image (``LMM.image_tokens``).
        video_tokens: feature tokens per video (``LMM.video_tokens``).
        template: overrides ``cfg.template`` and the tokenizer's own: a built-in name, a Jinja
            file or Jinja source (:func:`~mmalign.data.templates.load_template`).

    Raises:
        ValueError: the template drops the message text in either content shape.
    """

    def __init__(
        self,
        tokenizer: Any,
        cfg: LMMConfig,
        image_tokens: int,
        video_tokens: int,
        template: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.image_tokens = image_tokens
        self.video_tokens = video_tokens
        self.template = load_template(tokenizer, template or cfg.template, (cfg.image_token, cfg.video_token))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token")
        self.pad_token_id: int = int(pad)
        self.stop_token_ids: list[int] = stop_token_ids(tokenizer)
        self.eos_token_id: int | None = tokenizer.eos_token_id

    @classmethod
    def for_model(cls, model: Any, tokenizer: Any, template: str | None = None) -> MultimodalProcessor:
        return cls(tokenizer, model.cfg, model.image_tokens, model.video_tokens, template)

    # ----------------------------------------------------------------------------- text
    def _tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def _ends_turn(self, span_text: str) -> bool:
        """Whether an assistant turn's rendered text holds a stop marker (EOS or end-of-turn)."""
        markers = [*END_OF_TURN_MARKERS, self.tokenizer.eos_token or ""]
        return any(m and m in span_text for m in markers)

    def _expand(
        self, ids: list[int], labels: list[int], n_images: int, n_videos: int, sample_id: str
    ) -> tuple[list[int], list[int]]:
        img_id, vid_id = self.cfg.image_token_id, self.cfg.video_token_id
        if vid_id < 0 and (n_videos or self.cfg.video_token in self.tokenizer.decode(ids)):
            raise ValueError(
                f"sample {sample_id}: has a video but the model has no {self.cfg.video_token} token"
            )
        found_img = sum(1 for t in ids if t == img_id)
        found_vid = sum(1 for t in ids if t == vid_id) if vid_id >= 0 else 0
        if found_img != n_images or found_vid != n_videos:
            raise ValueError(
                f"sample {sample_id}: the text has {found_img} {self.cfg.image_token} and {found_vid} "
                f"{self.cfg.video_token} placeholders but the record has {n_images} image(s) and "
                f"{n_videos} video(s); put one placeholder per media item in the text"
            )
        out_ids: list[int] = []
        out_labels: list[int] = []
        for tok, lab in zip(ids, labels, strict=True):
            if tok == img_id:
                out_ids += [tok] * self.image_tokens
                out_labels += [IGNORE_INDEX] * self.image_tokens
            elif tok == vid_id and vid_id >= 0:
                out_ids += [tok] * self.video_tokens
                out_labels += [IGNORE_INDEX] * self.video_tokens
            else:
                out_ids.append(tok)
                out_labels.append(lab)
        return out_ids, out_labels

    def tokenize_conversation(
        self,
        messages: list[Message],
        n_images: int,
        n_videos: int,
        sample_id: str,
        max_length: int | None = None,
    ) -> tuple[list[int], list[int]]:
        """Token ids and labels of a whole conversation (targets = assistant turns only).

        Each assistant turn's targets end with a stop token: when the template renders none after
        the answer (llava-hf's published templates render ``ASSISTANT: answer`` and nothing
        after it), the tokenizer's EOS is appended to the turn as a target, as LLaVA's training
        puts ``</s>`` there; otherwise a model trained through such a template never learns to stop.

        Raises:
            ValueError: bad roles, a placeholder/media count mismatch, or truncation that would
                cut media tokens — each naming ``sample_id``.
        """
        validate_messages(messages, sample_id)
        text, spans = assistant_spans(self.tokenizer, self.template, messages)
        ids, labels = self._tokenize_turns(text, spans, targets=True)
        ids, labels = self._expand(ids, labels, n_images, n_videos, sample_id)
        return self._truncate(ids, labels, max_length, sample_id)

    def _tokenize_turns(
        self, text: str, spans: list[tuple[int, int]], targets: bool
    ) -> tuple[list[int], list[int]]:
        """Tokenise ``text``; the tokens inside assistant ``spans`` are targets (when ``targets``),
        and an assistant turn the template ends with no stop marker gets the EOS appended (a
        target too) — the same in a training conversation and in a prompt that holds earlier
        answers, so a prompt is always a prefix of its conversation."""
        ids, offsets = self._tokenize(text)
        labels = [IGNORE_INDEX] * len(ids)
        turn_ends: list[int] = []  # index after the last token of each assistant turn
        for s, e in spans:
            inside = [i for i, (start, end) in enumerate(offsets) if end > start and s <= start and end <= e]
            if targets:
                for i in inside:
                    labels[i] = ids[i]
            if inside and self.eos_token_id is not None and not self._ends_turn(text[s:e]):
                turn_ends.append(inside[-1] + 1)
        for at in reversed(turn_ends):  # the template ends no turn: teach the model to stop (EOS)
            ids.insert(at, self.eos_token_id)
            labels.insert(at, self.eos_token_id if targets else IGNORE_INDEX)
        return ids, labels

    def _truncate(
        self, ids: list[int], labels: list[int], max_length: int | None, sample_id: str
    ) -> tuple[list[int], list[int]]:
        if max_length is None or len(ids) <= max_length:
            return ids, labels
        media = {self.cfg.image_token_id, self.cfg.video_token_id}
        if any(t in media for t in ids[max_length:]):
            raise ValueError(
                f"sample {sample_id}: {len(ids)} tokens exceed max_length {max_length} and truncation "
                "would cut media tokens; raise max_length or drop the sample"
            )
        return ids[:max_length], labels[:max_length]

    def tokenize_prompt(
        self, messages: list[Message], n_images: int, n_videos: int, sample_id: str
    ) -> list[int]:
        """Token ids of a prompt ending with the assistant's generation prefix.

        Earlier assistant turns get the same stop token :meth:`tokenize_conversation` gives them.
        """
        text = render(self.tokenizer, self.template, messages, add_generation_prompt=True)
        spans: list[tuple[int, int]] = []
        if any(m["role"] == "assistant" for m in messages):
            full, spans = assistant_spans(self.tokenizer, self.template, messages)
            if not text.startswith(full):
                raise ValueError(
                    f"sample {sample_id}: the template's generation prompt does not extend the "
                    "conversation it follows; choose a built-in template (vicuna_v1, llama3, chatml)"
                )
        ids, labels = self._tokenize_turns(text, spans, targets=False)
        ids, _ = self._expand(ids, labels, n_images, n_videos, sample_id)
        return ids

    # ----------------------------------------------------------------------------- media
    def load_media(self, example: Example) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Pixels of an example: images ``(n, 3, S, S)`` and videos ``(m, T, 3, S, S)`` or None."""
        ip = self.cfg.image_processor
        images = [process_image(load_image(p), ip) for p in example.images]
        videos = [
            process_video(load_video_frames(p, self.cfg.video_frames, self.cfg.video_fps), ip)
            for p in example.videos
        ]
        return (torch.stack(images) if images else None, torch.stack(videos) if videos else None)

    def encode(self, example: Example, max_length: int | None = None) -> dict[str, Any]:
        """Training features of one example (ids, labels, pixels).

        Raises:
            RecordError: anything wrong with the example (a bad conversation, a missing or
                unreadable media file), naming its ``file:line`` and id.
        """
        with record_context(example):
            ids, labels = self.tokenize_conversation(
                example.messages, len(example.images), len(example.videos), example.id, max_length
            )
            images, videos = self.load_media(example)
        return {"id": example.id, "input_ids": ids, "labels": labels, "images": images, "videos": videos}

    def encode_prompt(self, example: Example) -> dict[str, Any]:
        """Generation features: the conversation up to its last user turn, with the assistant prefix.

        A trailing assistant turn (the reference answer) is dropped.
        """
        messages = example.messages
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        with record_context(example):
            ids = self.tokenize_prompt(messages, len(example.images), len(example.videos), example.id)
            images, videos = self.load_media(example)
        return {"id": example.id, "input_ids": ids, "labels": None, "images": images, "videos": videos}

    # ----------------------------------------------------------------------------- batches
    def collate(
        self, features: list[dict[str, Any]], padding_side: Literal["right", "left"] = "right"
    ) -> dict[str, Any]:
        """Pad a list of :meth:`encode` outputs into a batch.

        Returns:
            ``input_ids`` / ``attention_mask`` / ``labels`` ``(B, L)`` (labels only if every
            feature has them), ``images`` ``(ΣNi, 3, S, S)`` or None, ``videos``
            ``(ΣNv, T, 3, S, S)`` or None, ``ids``. Media are concatenated in row order, matching
            the placeholder order the LMM scatters into.
        """
        width = max(len(f["input_ids"]) for f in features)
        with_labels = [f.get("labels") is not None for f in features]
        if any(with_labels) and not all(with_labels):
            raise ValueError("collate: some features have labels and some do not")
        has_labels = all(with_labels)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
            ids[row, cols] = torch.tensor(f["input_ids"], dtype=torch.long)
            mask[row, cols] = 1
            if has_labels:
                labels[row, cols] = torch.tensor(f["labels"], dtype=torch.long)
        images = [f["images"] for f in features if f.get("images") is not None]
        videos = [f["videos"] for f in features if f.get("videos") is not None]
        batch: dict[str, Any] = {
            "ids": [f.get("id") for f in features],
            "input_ids": ids,
            "attention_mask": mask,
            "images": torch.cat(images) if images else None,
            "videos": torch.cat(videos) if videos else None,
        }
        if has_labels:
            batch["labels"] = labels
        return batch
