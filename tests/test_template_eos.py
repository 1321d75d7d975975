"""A template that ends no assistant turn (llava-hf's published style) still teaches the model to stop."""

from __future__ import annotations

from mmalign.data.processor import MultimodalProcessor
from mmalign.models.lmm import IGNORE_INDEX
from tests.test_typed_templates import CONVERSATION, LLAVA_STYLE

# llava-hf's published llava-1.5 template style renders "ASSISTANT: answer " and no end marker.
NO_STOP = LLAVA_STYLE.replace(" + ' ' + eos_token }}", " + ' ' }}")


def _targets(proc: MultimodalProcessor, conv: list[dict]) -> tuple[list[int], list[int]]:
    ids, labels = proc.tokenize_conversation(conv, 1, 0, "s")
    return ids, [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]


def test_eos_is_appended_as_a_target_when_the_template_ends_no_turn(tiny_model, tokenizer):
    proc = MultimodalProcessor.for_model(tiny_model, tokenizer, template=NO_STOP)
    eos = tokenizer.eos_token_id
    two_turns = [
        *CONVERSATION,
        {"role": "user", "content": "And now?"},
        {"role": "assistant", "content": "Red."},
    ]
    ids, targets = _targets(proc, two_turns)
    assert (
        tokenizer.decode(targets).replace(" ", "") == f"Green.{tokenizer.eos_token}Red.{tokenizer.eos_token}"
    )
    assert ids.count(eos) == 2 and targets.count(eos) == 2  # one stop after each answer, as a target
    # the prompt of the second turn is unchanged around the inserted stop: the text is all there
    assert "And now?" in tokenizer.decode(ids)


def test_no_extra_eos_when_the_template_ends_its_turns(tiny_model, tokenizer):
    for template in (LLAVA_STYLE, "chatml", "vicuna_v1", "plain"):
        proc = MultimodalProcessor.for_model(tiny_model, tokenizer, template=template)
        ids, targets = _targets(proc, CONVERSATION)
        stops = set(proc.stop_token_ids)
        assert sum(t in stops for t in targets) == 1, template  # exactly one stop: the template's own


def test_prompts_with_earlier_answers_stay_prefixes_of_their_conversations(tiny_model, tokenizer):
    """A multi-turn DPO prompt and a reward-prompt suffix under such a template: the prompt's
    earlier answer ends with the same EOS the conversation trains, so shared prefixes hold."""
    from mmalign.preference.batch import encode_group

    proc = MultimodalProcessor.for_model(tiny_model, tokenizer, template=NO_STOP)
    multi = [
        {"role": "user", "content": "Is there a star?"},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "What colour is the circle?"},
    ]
    prompt = proc.tokenize_prompt(multi, 0, 0, "p")
    conv, _ = proc.tokenize_conversation([*multi, {"role": "assistant", "content": "Red."}], 0, 0, "c")
    assert conv[: len(prompt)] == prompt and prompt.count(tokenizer.eos_token_id) == 1
    pair = encode_group(proc, "x", multi, ["Red.", "Blue."], load_media=False)
    assert pair.prompt_ids == prompt and [r[-1] for r in pair.responses] == [tokenizer.eos_token_id] * 2
    suffix = [{"role": "user", "content": "Is it correct?"}]
    judged = encode_group(proc, "y", multi[:1], ["Yes.", "No."], suffix=suffix, load_media=False)
    assert all(tokenizer.eos_token_id in r for r in judged.responses)  # answer, EOS, then the suffix
