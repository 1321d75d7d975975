"""CHAIR's COCO word matching against the whole shipped synonym list of the CHAIR authors."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmalign.eval.chair import SYNONYMS_FILE, CocoVocabulary, chair_scores

# Plurals written out by hand (not by the code under test): irregular ones, words whose plural is
# the word itself, and words already plural in the list.
IRREGULAR_PLURALS = {
    "person": ["people", "persons"],
    "man": ["men"],
    "woman": ["women"],
    "gentleman": ["gentlemen"],
    "policeman": ["policemen"],
    "serviceman": ["servicemen"],
    "child": ["children"],
    "grandchild": ["grandchildren"],
    "mouse": ["mice"],
    "goose": ["geese"],
    "ox": ["oxen"],
    "knife": ["knives"],
    "knive": ["knives"],
    "pocketknife": ["pocketknives"],
    "thief": ["thieves"],
    "calf": ["calves"],
    "bus": ["buses", "busses"],
    "minibus": ["minibuses"],
    "airbus": ["airbuses"],
    "buffalo": ["buffaloes", "buffalos"],
    "bronco": ["broncos"],
    "flamingo": ["flamingos", "flamingoes"],
    "palomino": ["palominos"],
    "limo": ["limos"],
    "taxi": ["taxis"],
    "doberman": ["dobermans"],
    "sheep": ["sheep"],
    "bison": ["bison"],
    "aircraft": ["aircraft"],
    "luggage": ["luggage"],
    "broccoli": ["broccoli"],
    "fowl": ["fowl", "fowls"],
    "waterfowl": ["waterfowl", "waterfowls"],
}
ALREADY_PLURAL = {"people", "children", "cattle", "oxen", "skis", "scissors"}


def plurals(name: str) -> list[str]:
    """English plurals of a word or name (the last word inflects: ``hot dogs``, ``wine glasses``)."""
    head, _, last = name.rpartition(" ")
    prefix = f"{head} " if head else ""
    if last in ALREADY_PLURAL:
        forms = [last]
    elif last in IRREGULAR_PLURALS:
        forms = IRREGULAR_PLURALS[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        forms = [last + "es"]
    elif last.endswith("y") and last[-2] not in "aeiou":
        forms = [last[:-1] + "ies"]
    else:
        forms = [last + "s"]
    return [prefix + f for f in forms]


def synonym_lines() -> list[tuple[str, list[str]]]:
    """``(category, words)`` per line of the shipped file, read independently of the parser."""
    out = []
    for line in SYNONYMS_FILE.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        words = [" ".join(w.lower().split()) for w in line.split(",") if w.strip()]
        out.append((words[0], words))
    return out


@pytest.fixture(scope="module")
def vocab() -> CocoVocabulary:
    return CocoVocabulary.from_synonyms()


def test_shipped_list_is_the_chair_authors_list(vocab: CocoVocabulary) -> None:
    lines = synonym_lines()
    assert len(lines) == 80 and lines[0][0] == "person" and lines[-1][0] == "toothbrush"
    words = {w for _, ws in lines for w in ws}
    assert len(words) == 403 and vocab.to_category == {w: c for c, ws in lines for w in ws}
    assert {"televison", "solider", "phon", "knive", "iphone", "stove top oven"} <= words
    assert (
        "BSD 2-Clause" in SYNONYMS_FILE.read_text() and "LisaAnne/Hallucination" in SYNONYMS_FILE.read_text()
    )


def test_every_word_and_its_plural_maps_to_its_category(vocab: CocoVocabulary) -> None:
    failures = []
    for category, words in synonym_lines():
        for word in words:
            for form in [word, *plurals(word)]:
                for caption in (form, f"I see {form} here.", f"{form.capitalize()}, next to nothing."):
                    got = vocab.objects(caption)
                    if got != [category]:
                        failures.append((caption, category, got))
    assert not failures, f"{len(failures)} failures, e.g. {failures[:10]}"


@pytest.mark.parametrize(
    ("caption", "objects"),
    [
        # the reference's rules: qualifiers, two-word names, the toilet seat
        ("A baby elephant and an adult giraffe.", ["elephant", "giraffe"]),
        ("Two baby birds and a baby.", ["bird", "person"]),
        ("A passenger train and a passenger jet carry passengers.", ["train", "airplane", "person"]),
        ("A man in a bow tie holds a bow.", ["person", "tie", "tie"]),
        ("The toilet seat is up.", ["toilet"]),
        ("The seat of the toilet is up.", ["toilet"]),
        ("A seat by the window.", ["chair"]),
        ("Train tracks at the home plate.", []),
        ("Two hot dogs and a dog.", ["hot dog", "dog"]),
        ("A teddy bear and a bear.", ["teddy bear", "bear"]),
        ("A stove top oven and a stove.", ["oven", "oven"]),
        ("Dining tables, a table and a desk.", ["dining table", "dining table", "dining table"]),
        # tokens: hyphenated words stay whole (as NLTK's), possessives split
        ("A hot-dog stand and a dog's bowl.", ["dog", "bowl"]),
        ("Collies, huskies, puppies and doggies.", ["dog", "dog", "dog", "dog"]),
        ("Wine glasses and glasses.", ["wine glass"]),
        ("TVs, iPhones and SUVs.", ["tv", "cell phone", "car"]),
    ],
)
def test_reference_rules(vocab: CocoVocabulary, caption: str, objects: list[str]) -> None:
    assert vocab.objects(caption) == objects


@pytest.mark.parametrize(
    ("caption", "mentioned"),
    [
        ("A man rides a horse past grazing calves, parked taxis and two collies.", ["cow", "car", "dog"]),
        (
            "A man rides a horse past two giraffes, a pair of knives and a flock of geese.",
            ["giraffe", "knife", "bird"],
        ),
    ],
)
def test_three_absent_objects_are_hallucinations(
    vocab: CocoVocabulary, caption: str, mentioned: list[str]
) -> None:
    """The first caption scored CHAIR-i 0 before: calves, taxis and collies matched nothing."""
    assert vocab.objects(caption) == ["person", "horse", *mentioned]
    res = chair_scores([vocab.objects(caption)], [{"person", "horse"}])
    assert res["n_mentions"] == 5 and res["n_hallucinated"] == 3
    assert res["chair_i"] == pytest.approx(3 / 5) and res["chair_s"] == 1.0 and res["recall"] == 1.0


def test_synonym_file_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "synonyms.txt"
    bad.write_text("# a comment\nperson, man\ndog, pup3py\n")
    with pytest.raises(ValueError, match=r"synonyms.txt:3: synonyms must be words"):
        CocoVocabulary.from_synonyms(bad)
    bad.write_text("# only a comment\n")
    with pytest.raises(ValueError, match="no synonyms"):
        CocoVocabulary.from_synonyms(bad)
