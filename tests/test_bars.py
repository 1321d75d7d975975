"""The quality-bars report: judgements on hand-made measurements, and the shipped tiny checkpoint.

The shipped-checkpoint tests measure the committed model on held-out ShapeWorld scenes generated
here with a seed the training data never used: it loads and meets every judged bar (grounded
answers and captions, the prior-driven "yes" and caption mentions that the alignment methods are
measured on, video motion and existence).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmalign.eval.bars import BARS, format_table, passes

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "checkpoints" / "tiny-shapeworld"

GOOD = {
    "existence": 0.95,
    "existence_yes_ratio": 0.5,
    "color": 0.9,
    "count": 0.95,
    "position": 0.85,
    "chair_i": 0.01,
    "prior_yes": 0.7,
    "prior_yes_control": 0.0,
    "prior_yes_x": 0.7 / 1e-9,
    "prior_mention": 0.3,
    "prior_mention_control": 0.03,
    "prior_mention_x": 10.0,
    "video_motion": 0.9,
    "video_existence": 0.95,
}


def test_bars_judge_each_requirement():
    assert all(ok in (True, None) for ok in passes(GOOD).values())
    assert {b.key for b in BARS} == set(GOOD)
    cases = {
        "existence": 0.89,
        "existence_yes_ratio": 0.56,
        "color": 0.84,
        "count": 0.89,
        "position": 0.79,
        "chair_i": 0.051,
        "prior_yes": 0.49,
        "prior_mention": 0.19,
        "video_motion": 0.84,
        "video_existence": 0.89,
    }
    for key, bad in cases.items():
        verdict = passes({**GOOD, key: bad})
        assert verdict[key] is False and sum(v is False for v in verdict.values()) == 1, key
    # 5x the control: 0.3 vs 0.07 fails, 0.3 vs 0.06 passes
    assert passes({**GOOD, "prior_mention_control": 0.07})["prior_mention_x"] is False
    assert passes({**GOOD, "prior_mention_control": 0.06})["prior_mention_x"] is True
    assert passes({**GOOD, "existence_yes_ratio": 0.44})["existence_yes_ratio"] is False


def test_table_has_one_column_per_model_in_order():
    bad = {**GOOD, "prior_yes": 0.0, "prior_yes_x": 0.0}
    table = format_table({"sft": GOOD, "dpo": bad})
    lines = table.splitlines()
    assert lines[0] == "| bar | required | sft | dpo |" and len(lines) == 2 + len(BARS)
    row = next(line for line in lines if 'false "yes" to partner, violating' in line)
    assert row.split("|")[3].strip() == "0.700 ok" and row.split("|")[4].strip() == "0.000 FAIL"
    assert "inf" in next(line for line in lines if "false-yes violating >= 5x" in line)


@pytest.fixture(scope="module")
def shipped_measurement(tmp_path_factory):
    """The shipped checkpoint measured on held-out scenes (seed 101; it was trained on seed 0)."""
    from mmalign.data.processor import MultimodalProcessor
    from mmalign.eval.bars import BarLimits, measure
    from mmalign.models.checkpoint import load_model
    from mmalign.shapeworld import WorldConfig, generate

    data = tmp_path_factory.mktemp("heldout")
    world = WorldConfig.from_dict(json.loads((ROOT / "configs/shapeworld/world.json").read_text()))
    generate(
        data, 240, 400, seed=101, cfg=world, val_frac=0.0, test_frac=0.5, prior_per_group=40, progress=False
    )
    model, tokenizer = load_model(SHIPPED)
    model.eval()
    processor = MultimodalProcessor.for_model(model, tokenizer)
    m = measure(model, processor, data, BarLimits(n_images=120, n_videos=200, n_prior=40, batch_size=64))
    assert m["n"]["existence"] >= 100 and m["n"]["video_motion"] >= 300 and m["n"]["prior_violating"] == 40
    return m


# The shipped checkpoint meets every judged bar on this held-out set (120 images, 200 videos,
# 40 + 40 probes; its model card has the full test split). Measured here: existence 0.996, count
# 0.933, position 0.925, CHAIR-i 0.008, prior "yes" 0.925 and caption mentions 0.475 vs 0.000 on
# controls, video existence 0.943, video motion 0.921 (316 of 343). The video sample was 40 clips
# (68 motion questions, 0.853 = 58 of 68) until a CI machine answered one question differently and
# read 0.838: at p = 0.87 a 68-question sample has a standard error of 0.04, so it could not judge
# a 0.85 bar; 343 questions (standard error 0.015) can, and cost 5 s more.
JUDGED = [b.key for b in BARS if b.check is not None]


@pytest.mark.slow
def test_shipped_checkpoint_meets_every_bar(shipped_measurement):
    verdict = passes(shipped_measurement)
    failed = [k for k in JUDGED if not verdict[k]]
    assert not failed, f"bars failed: {failed}\n{format_table({'shipped': shipped_measurement})}"
    assert len(JUDGED) == 12
