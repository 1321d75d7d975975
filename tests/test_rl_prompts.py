"""RL prompts: LLaVA-RLHF's PPO prompt files + image_to_caption.json, our LLaVA records, facts checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmalign.data.formats import RecordError
from mmalign.rl.prompts import RLPrompt, check_facts, load_prompts


def human(text: str) -> dict:
    return {"from": "human", "value": text}


def gpt(text: str) -> dict:
    return {"from": "gpt", "value": text}


MC_QUESTION = "<image>\nWhat animal is it?\nA. cat\nB. dog\nC. cow\nD. owl\nAnswer with the option's letter."

# As LLaVA-RLHF publishes them: {id, image, conversations, caption_type?, length_bonus?}, a JSON list
RLHF_RECORDS = [
    {
        "id": "g1",
        "image": "000000000123.jpg",
        "conversations": [human("<image>\nDescribe it."), gpt("A dog.")],
    },
    {
        "id": "m1",
        "image": "000000000456.jpg",
        "caption_type": 3,
        "length_bonus": 0.5,
        "conversations": [human(MC_QUESTION), gpt("B")],
    },
    {
        "id": "n1",
        "image": "000000000123.jpg",
        "caption_type": 6,
        "conversations": [human("<image>\nIs there a cat?"), gpt("No")],
    },
    {
        "id": "y1",
        "image": "789.jpg",
        "caption_type": 7,
        "conversations": [human("<image>\nIs there a dog?"), gpt("Yes")],
    },
]
CAPTIONS = {
    "000000000123.jpg": ["A dog on grass.", "A brown dog."],
    "000000000456.jpg": ["COCO caption of 456."],
    "aok_000000000456.jpg": ["A dog sits by a cat.", "Two pets."],
    "000000000789.jpg": ["A dog runs."],
}


def write_json(path: Path, records: list) -> Path:
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    return path


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_llava_rlhf_prompt_file_with_caption_lookup(tmp_path):
    data = write_json(tmp_path / "ppo.json", RLHF_RECORDS)
    (tmp_path / "image_to_caption.json").write_text(json.dumps(CAPTIONS))
    media = tmp_path / "coco"
    prompts = load_prompts(data, captions=tmp_path / "image_to_caption.json", media_root=media)
    g, m, n, y = prompts
    assert [p.id for p in prompts] == ["g1", "m1", "n1", "y1"]
    assert [p.where for p in prompts] == [f"{data}:{i}" for i in (2, 3, 4, 5)]
    # the gpt turn is dropped: the prompt ends with the user turn
    assert g.prompt == [{"role": "user", "content": "<image>\nDescribe it."}]
    assert m.prompt == [{"role": "user", "content": MC_QUESTION}]
    assert g.images == [media / "000000000123.jpg"] and g.videos == []
    assert (g.kind, g.answer, g.captions, g.length_bonus) == ("open", None, CAPTIONS["000000000123.jpg"], 1.0)
    # multiple choice: caption_type 3 → B, captions under LLaVA-RLHF's aok_ key (not the plain COCO one)
    assert (m.kind, m.answer, m.length_bonus) == ("multiple_choice", "B", 0.5)
    assert m.captions == CAPTIONS["aok_000000000456.jpg"]
    assert (n.kind, n.answer, n.captions) == ("yes_no", "no", CAPTIONS["000000000123.jpg"])
    # a non-padded numeric stem is looked up as the 12-digit COCO name, as their code does
    assert (y.kind, y.answer, y.captions) == ("yes_no", "yes", ["A dog runs."])
    assert "caption_type" not in m.meta and "length_bonus" not in m.meta
    # the same mapping passed as a dict; media root defaults to the file's folder
    again = load_prompts(data, captions=CAPTIONS)
    assert [p.captions for p in again] == [p.captions for p in prompts]
    assert again[0].images == [tmp_path / "000000000123.jpg"]


def test_our_llava_records_carry_captions_and_answers(tmp_path):
    records = [
        {
            "id": "a",
            "image": "a.png",
            "conversations": [human("<image>\nIs there a star?")],
            "captions": ["x"],
            "answer": "Yes.",
        },
        {
            "id": "b",
            "image": "b.png",
            "conversations": [human(MC_QUESTION)],
            "captions": ["y"],
            "answer": "(C)",
        },
        {
            "id": "c",
            "image": "c.png",
            "conversations": [human("<image>\nWhich letter is on the sign?")],
            "answer": "C",
        },
        {
            "id": "d",
            "image": "d.png",
            "conversations": [human("<image>\nColour?")],
            "gt_answer": "red",
            "task": "color",
        },
        {
            "id": "e",
            "image": "e.png",
            "conversations": [human("<image>\nHi."), gpt("Hello."), human("Is it red?"), gpt("No.")],
            "captions": ["z"],
        },
    ]
    a, b, c, d, e = load_prompts(write_jsonl(tmp_path / "p.jsonl", records), captions=CAPTIONS)
    assert (a.kind, a.answer, a.captions) == ("yes_no", "yes", ["x"])
    assert (b.kind, b.answer) == ("multiple_choice", "C")
    assert (c.kind, c.answer, c.captions) == ("open", "C", None)  # a letter, but no options listed
    assert (d.kind, d.answer, d.meta["task"]) == ("open", "red", "color")
    assert d.meta["caption_keys_tried"] == ["d.png"]  # not in the caption file: reported by check_facts
    # multi-turn: everything up to and including the last user turn
    assert [m["content"] for m in e.prompt] == ["<image>\nHi.", "Hello.", "Is it red?"]
    assert e.where == f"{tmp_path / 'p.jsonl'}:5"


def test_video_record_encodes_as_a_prompt(tmp_path, tiny_model, tokenizer):
    from mmalign.data.processor import MultimodalProcessor
    from tests.test_data import write_mp4

    rng = np.random.default_rng(0)
    (tmp_path / "clips").mkdir()
    write_mp4(
        tmp_path / "clips" / "v1.mp4", [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(5)]
    )
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "i1.png")
    records = [
        {
            "id": "v1",
            "video": "clips/v1.mp4",
            "conversations": [human("<video>\nWhere does the circle move?"), gpt("Right.")],
            "captions": ["A red circle moves right."],
        },
        {
            "id": "i1",
            "image": "i1.png",
            "conversations": [human("<image>\nIs there a star?")],
            "answer": "no",
        },
    ]
    v, i = load_prompts(write_jsonl(tmp_path / "p.jsonl", records))
    assert v.videos == [tmp_path / "clips" / "v1.mp4"] and v.images == []
    assert (v.kind, v.captions) == ("open", ["A red circle moves right."])
    processor = MultimodalProcessor.for_model(tiny_model, tokenizer)
    ex = v.to_example()
    assert (ex.id, ex.where, ex.messages) == ("v1", v.where, v.prompt)
    feats = processor.encode_prompt(ex)
    assert feats["videos"] is not None and feats["videos"].shape[0] == 1 and feats["images"] is None
    feats = processor.encode_prompt(i.to_example())
    assert feats["images"].shape[0] == 1 and feats["labels"] is None


def test_check_facts_errors_or_skips(tmp_path):
    records = RLHF_RECORDS + [
        {"id": "m2", "image": "000000000999.jpg", "caption_type": 2, "conversations": [human(MC_QUESTION)]}
    ]
    data = write_json(tmp_path / "ppo.json", records)
    prompts = load_prompts(data, captions=CAPTIONS)
    assert prompts[4].captions is None
    with pytest.raises(ValueError) as err:
        check_facts(prompts, need_captions=True)
    msg = str(err.value)
    assert f"{data}:6 (id m2)" in msg and "captions" in msg and "aok_000000000999.jpg" in msg
    kept, skipped = check_facts(prompts, need_captions=True, on_missing="skip")
    assert [p.id for p in kept] == ["g1", "m1", "n1", "y1"] and skipped == ["m2"]
    # an answer: the general record g1 has none
    with pytest.raises(ValueError, match=rf"{data}:2 \(id g1\).*an answer"):
        check_facts(prompts, need_captions=False, need_answer=True)
    kept, skipped = check_facts(prompts, need_captions=False, need_answer=True, on_missing="skip")
    assert skipped == ["g1"] and len(kept) == 4
    assert check_facts(prompts, need_captions=False) == (prompts, [])
    with pytest.raises(ValueError, match="on_missing"):
        check_facts(prompts, need_captions=True, on_missing="drop")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bad", "what"),
    [
        ({"id": "x", "image": "a.jpg"}, "conversations"),
        ({"id": "x", "image": "a.jpg", "caption_type": 9, "conversations": [human("q")]}, "caption_type"),
        ({"id": "x", "image": "a.jpg", "caption_type": True, "conversations": [human("q")]}, "caption_type"),
        ({"id": "x", "caption_type": 6, "answer": "yes", "conversations": [human("q")]}, "contradicts"),
        ({"id": "x", "length_bonus": "big", "conversations": [human("q")]}, "length_bonus"),
        ({"id": "x", "length_bonus": -1, "conversations": [human("q")]}, "length_bonus"),
        ({"id": "x", "captions": [], "conversations": [human("q")]}, "captions"),
        ({"id": "x", "captions": "one", "conversations": [human("q")]}, "captions"),
        ({"id": "x", "answer": 3, "conversations": [human("q")]}, "answer"),
        ({"id": "x", "conversations": [gpt("only an answer")]}, "no user"),
    ],
)
def test_malformed_record_names_file_line_and_id(tmp_path, bad, what):
    good = {"id": "ok", "conversations": [human("q")]}
    data = write_jsonl(tmp_path / "p.jsonl", [good, good, bad])
    with pytest.raises(RecordError, match=rf"p\.jsonl:3 \(id x\).*{what}"):
        load_prompts(data)


def test_bad_caption_file_and_code_built_prompts(tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"id": "ok", "conversations": [human("q")]}])
    (tmp_path / "caps.json").write_text(json.dumps({"a.jpg": "not a list"}))
    with pytest.raises(ValueError, match=r"caps\.json: key 'a\.jpg'"):
        load_prompts(data, captions=tmp_path / "caps.json")
    with pytest.raises(FileNotFoundError):
        load_prompts(data, captions=tmp_path / "missing.json")
    with pytest.raises(ValueError, match="multiple-choice answer"):
        RLPrompt("p", [{"role": "user", "content": "q"}], [], [], None, "E", "multiple_choice")
    with pytest.raises(ValueError, match="kind"):
        RLPrompt("p", [{"role": "user", "content": "q"}], [], [], None, None, "essay")  # type: ignore[arg-type]
