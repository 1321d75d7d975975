"""A small byte-level BPE tokenizer trained offline on a corpus (ShapeWorld text by default).

It is wrapped as a transformers fast tokenizer with the special tokens the rest of the project
expects (``<image>``, ``<video>``, chat markers) and the ``chatml`` chat template, so that it is
saved and loaded exactly like a real checkpoint's tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mmalign.data.templates import BUILTIN_TEMPLATES

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "<video>", "<|im_start|>", "<|im_end|>"]


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 512, template: str = "chatml") -> Any:
    """Train a byte-level BPE tokenizer.

    Args:
        texts: training text (captions, questions, answers).
        vocab_size: target vocabulary size including special tokens and the 256 byte symbols.
        template: built-in chat template stored as the tokenizer's ``chat_template``.

    Returns:
        A ``PreTrainedTokenizerFast``: pad ``<pad>``, bos ``<s>``, eos ``<|im_end|>`` (the end of
        an assistant turn under chatml, so generation stops there), unk ``<unk>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    eos = "<|im_end|>" if template == "chatml" else "</s>"
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token=eos,
        unk_token="<unk>",
        additional_special_tokens=["<image>", "<video>", "<|im_start|>", "<|im_end|>"],
        chat_template=BUILTIN_TEMPLATES[template],
        model_max_length=4096,
    )
