"""Chat templates that read typed content parts (llava-hf style): the full text reaches the model.

An imported llava-hf checkpoint carries a template that iterates over ``{"type": "text"}`` /
``{"type": "image"}`` parts and prints nothing for a string. These tests save a tiny llava-hf
checkpoint (built from config) with such a template — written here in the style of llava-hf's
llava-1.5 one: role in capitals, images first, then the text parts — import it, and check that
SFT, DPO, evaluation and the chat server all see the question and the answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmalign.config import ConfigError, load_config
from mmalign.data.formats import Example
from mmalign.data.processor import MultimodalProcessor
from mmalign.data.templates import assistant_spans, load_template, render, to_typed_content
from mmalign.models.checkpoint import load_model
from mmalign.preference.batch import encode_pair
from mmalign.preference.formats import PreferencePair
from mmalign.training.sft_config import SFTConfig

# In the style of llava-hf/llava-1.5-7b-hf's chat_template (not a copy): typed parts only.
LLAVA_STYLE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ part['text'] + ' ' + eos_token }}{% endgeneration %}"
    "{% else %}{{ part['text'] + ' ' }}{% endif %}"
    "{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
QUESTION = [{"role": "user", "content": "<image>\nWhat color?"}]
CONVERSATION = [*QUESTION, {"role": "assistant", "content": "Green."}]


def test_typed_template_is_detected_and_renders_the_whole_conversation(tokenizer):
    template = load_template(tokenizer, LLAVA_STYLE)
    assert template.typed
    assert not load_template(tokenizer, "chatml").typed
    # As strings, the template would print the roles only: what the issue saw.
    as_strings = tokenizer.apply_chat_template(CONVERSATION, chat_template=LLAVA_STYLE, tokenize=False)
    assert as_strings == "USER: ASSISTANT: "
    assert to_typed_content(CONVERSATION)[0]["content"] == [
        {"type": "image"},
        {"type": "text", "text": "What color?"},
    ]
    text = render(tokenizer, template, CONVERSATION, add_generation_prompt=False)
    assert text == "USER: <image>\nWhat color? ASSISTANT: Green. <|im_end|>"
    full, spans = assistant_spans(tokenizer, template, CONVERSATION)
    assert [full[s:e] for s, e in spans] == [" Green. <|im_end|>"]
    prompt = render(tokenizer, template, QUESTION, add_generation_prompt=True)
    assert prompt == "USER: <image>\nWhat color? ASSISTANT:"


def test_a_rendering_that_drops_text_or_media_is_an_error(tokenizer):
    drops_assistant = LLAVA_STYLE.replace("{{ part['text'] + ' ' + eos_token }}", "{{ eos_token }}")
    with pytest.raises(ValueError, match=r"\(inline template\) drops text of message 1 \(assistant\)"):
        load_template(tokenizer, drops_assistant)
    drops_system = LLAVA_STYLE.replace(
        "{% for message in messages %}", "{% for message in messages if message['role'] != 'system' %}"
    )
    template = load_template(tokenizer, drops_system)
    with pytest.raises(ValueError, match=r"drops text of message 0 \(system\): 'Answer briefly.'"):
        render(tokenizer, template, [{"role": "system", "content": "Answer briefly."}, *CONVERSATION], False)
    own_image_token = LLAVA_STYLE.replace("{{ '<image>\n' }}", "{{ '<img>' }}")
    with pytest.raises(ValueError, match=r"renders 0 <image> for 1 in typed media parts"):
        render(tokenizer, load_template(tokenizer, own_image_token), CONVERSATION, False)
    with pytest.raises(ValueError, match="drops the user's text whether the content is a string or typed"):
        load_template(tokenizer, "{% for m in messages %}{{ m['role'] }}{% endfor %}")


def test_template_override_is_checked_in_the_configs(tmp_path):
    with pytest.raises(ConfigError, match="unknown template 'vicuna'"):
        load_config(SFTConfig, None, ["template=vicuna"])
    path = tmp_path / "llava.jinja"
    path.write_text(LLAVA_STYLE)
    assert load_config(SFTConfig, None, [f"template={path}"]).template == str(path)


def _tiny_llava_hf(tokenizer, directory: Path) -> Path:
    """A tiny llava-hf checkpoint built from config, saved with the typed template."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=16,
    )
    LlavaForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.chat_template = LLAVA_STYLE
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture()
def imported(tokenizer, tmp_path):
    path = _tiny_llava_hf(tokenizer, tmp_path / "llava_hf")
    model, tok = load_model(path)
    assert tok.chat_template == LLAVA_STYLE
    return path, model, tok


def _text(tok, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=False)


def test_imported_llava_hf_sft_dpo_and_eval_inputs_hold_the_text(imported):
    _, model, tok = imported
    proc = MultimodalProcessor.for_model(model, tok)
    assert proc.template.typed and proc.template.name == "the tokenizer's chat_template"
    # SFT: the question is context, the answer (and its end of turn) is the target.
    ids, labels = proc.tokenize_conversation(CONVERSATION, 1, 0, "sft")
    text = _text(tok, ids)
    assert "What color?" in text and "Green." in text and ids.count(model.cfg.image_token_id) == 16
    assert _text(tok, [t for t, lab in zip(ids, labels, strict=True) if lab >= 0]) == " Green. <|im_end|>"
    # Text-only SFT trains on the whole answer, not on a few template tokens.
    text_only = [
        {"role": "user", "content": "How many objects are there?"},
        {"role": "assistant", "content": "3."},
    ]
    ids, labels = proc.tokenize_conversation(text_only, 0, 0, "text")
    assert "How many objects are there?" in _text(tok, ids)
    # DPO: a shared prompt holding the question, two different responses.
    pair = PreferencePair("p", QUESTION, "Green.", "Purple with stripes.", images=[Path("unused.png")])
    enc = encode_pair(proc, pair, load_media=False)
    assert _text(tok, enc.prompt_ids).endswith("What color? ASSISTANT:")
    assert [_text(tok, r) for r in enc.responses] == [
        " Green. <|im_end|>",
        " Purple with stripes. <|im_end|>",
    ]
    # Evaluation prompts: the question is there, the reference answer is not.
    feats = proc.tokenize_prompt(QUESTION, 1, 0, "eval")
    assert _text(tok, feats).endswith("What color? ASSISTANT:")
    example = Example("e", CONVERSATION, images=[])
    with pytest.raises(
        ValueError, match=r"has 1 <image> and 0 <video> placeholders but the record has 0 image"
    ):
        proc.encode_prompt(example)  # placeholder count checks still apply (no image given)


def test_chat_server_gives_different_prompts_different_ids(imported):
    from mmalign.serve.engine import ChatEngine
    from mmalign.serve.protocol import ServeLimits, parse_chat_request

    _, model, tok = imported
    engine = ChatEngine(model, tok, "tiny-llava-hf")
    prepared = [
        engine.prepare(
            parse_chat_request(
                {"messages": [{"role": "user", "content": q}]}, engine.placeholders, ServeLimits()
            )
        )
        for q in ("What color is the circle?", "How many objects are there?")
    ]
    a, b = (p.input_ids[0].tolist() for p in prepared)
    assert a != b
    assert _text(tok, a) == "USER: What color is the circle? ASSISTANT:"


def test_template_override_replaces_the_checkpoints(imported):
    _, model, tok = imported
    proc = MultimodalProcessor.for_model(model, tok, template="vicuna_v1")
    assert not proc.template.typed
    assert "USER: <image>\nWhat color? ASSISTANT:" in _text(
        tok, proc.tokenize_prompt(QUESTION, 1, 0, "x")
    ).replace("<image>" * 16, "<image>")


def test_sft_dry_run_on_the_imported_checkpoint_shows_the_text(imported, tmp_path, capsys):
    import sys

    from tests.distributed import ROOT

    path, _, _ = imported
    data = tmp_path / "sft.json"
    record = {
        "id": "q1",
        "conversations": [
            {"from": "human", "value": "What color is the circle?"},
            {"from": "gpt", "value": "The circle is green."},
        ],
    }
    data.write_text(json.dumps([record]))
    sys.path.insert(0, str(ROOT / "train"))
    try:
        import sft as sft_script
    finally:
        sys.path.remove(str(ROOT / "train"))
    assert sft_script.main([f"model={path}", f"data=[{{path: {data}}}]", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "typed content" in out
    assert "USER: What color is the circle? ASSISTANT:[[ The circle is green. <|im_end|>]]" in out


def test_chat_and_eval_clis_take_a_template(imported):
    import argparse
    import importlib.util

    from tests.distributed import ROOT

    def script(name: str):
        spec = importlib.util.spec_from_file_location(f"_cli_{name}", ROOT / "eval" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    path, _, _ = imported
    engine = script("chat")._engine(argparse.Namespace(model=str(path), name="m", template="vicuna_v1"))
    assert engine.processor.template.name == "vicuna_v1" and not engine.processor.template.typed
    assert (
        script("run").build_parser().parse_args(["--model", str(path), "--template", "chatml"]).template
        == "chatml"
    )
