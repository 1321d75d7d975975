"""``eval/run.py`` on two tiny saved checkpoints and a small generated ShapeWorld: JSON, table, charts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _load_cli():
    spec = importlib.util.spec_from_file_location("eval_run", ROOT / "eval" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_run_compares_checkpoints(tmp_path: Path, make_tokenizer, capsys) -> None:
    from mmalign.shapeworld.generate import generate
    from tests.serve_helpers import save_tiny_checkpoint

    data = tmp_path / "sw"
    generate(data, n_images=20, n_videos=4, seed=2, progress=False, val_frac=0.0, test_frac=0.5)
    a = save_tiny_checkpoint(make_tokenizer(), tmp_path / "base", seed=0)
    b = save_tiny_checkpoint(make_tokenizer(), tmp_path / "runs" / "other" / "final", seed=1)
    out = tmp_path / "eval"
    cli = _load_cli()
    args = [
        "--model",
        f"base={a}",
        "--model",
        str(b),
        "--data",
        str(data),
        "--n",
        "8",
        "--max-new-tokens",
        "12",
    ]
    assert cli.main([*args, "--out", str(out), "--batch-size", "8", "--no-progress"]) == 0

    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["base", "other/final"]  # a user's NAME, else a path that tells runs apart
    for res in results.values():
        assert set(res) == {"checkpoint", "pope", "chair", "mmhal", "gavie", "videoqa"}
        assert {"random", "popular", "adversarial", "average"} <= set(res["pope"])
        assert res["pope"]["random"]["n"] == 8 and res["chair"]["n_captions"] == 8
        assert res["pope"]["parser"] == "reference" and res["pope"]["average"]["n"] == 24
        assert "records" not in res["pope"] and "records" not in res["chair"]
        assert res["mmhal"]["n"] == 8 and res["mmhal"]["judge"] == "exact" and res["gavie"]["n"] == 8
        assert 0 < res["videoqa"]["n"] <= 8 and all(
            r["source"] == "shapeworld" for k, r in res.items() if k != "checkpoint"
        )
        assert 0.0 <= res["mmhal"]["average"] <= 6.0 and 0.0 <= res["chair"]["chair_i"] <= 1.0
    for label in ("base", "other/final"):  # POPE: every probe with the answer and its reading
        pope_records = json.loads((out / "records" / label / "pope.json").read_text())
        assert len(pope_records) == 24 and [r["split"] for r in pope_records[::8]] == [
            "random", "popular", "adversarial",
        ]  # fmt: skip
        pope = results[label]["pope"]
        for r in pope_records:
            assert {"question_id", "image", "text", "label", "answer", "read_as", "fits", "correct"} <= set(r)
            assert r["correct"] == (r["read_as"] == r["label"])
        assert sum(not r["fits"] for r in pope_records) == pope["average"]["n_unparseable"]
        assert sum(r["correct"] for r in pope_records if r["split"] == "random") == round(
            8 * pope["random"]["accuracy"]
        )
        chair_records = json.loads((out / "records" / label / "chair.json").read_text())
        assert len(chair_records) == 8
        assert sum(r["n_hallucinated"] for r in chair_records) == results[label]["chair"]["n_hallucinated"]
    mmhal_records = json.loads((out / "records" / "base" / "mmhal.json").read_text())
    assert len(mmhal_records) == 8 and {"question_type", "model_answer", "rating"} <= set(mmhal_records[0])
    assert len({r["question_type"] for r in mmhal_records}) >= 5  # types cycle as in MMHal-Bench

    table = (out / "table.md").read_text()
    assert table.splitlines()[0] == "| metric | base | other/final |"
    assert "| CHAIR-i ↓ |" in table and "| MMHal avg rating (0-6) ↑ |" in table and "video QA" in table
    unread = [results[m]["pope"]["average"]["n_unparseable"] for m in results]
    cells = [f"{'⚠ ' if k else ''}{k} ({k / 24:.1%})" for k in unread]
    assert f"| POPE answers fitting neither yes nor no | {cells[0]} | {cells[1]} |" in table
    assert table in capsys.readouterr().out
    for bench in ("pope", "chair", "mmhal", "gavie", "videoqa"):
        png = out / "charts" / f"{bench}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000

    # benchmarks without data or without a judge fail early, naming the option to pass
    assert cli.main(["--model", str(a), "--benchmarks", "pope", "--out", str(out)]) == 2
    assert "--data SHAPEWORLD_DIR" in capsys.readouterr().err
    mm = ["--model", str(a), "--benchmarks", "mmhal", "--mmhal", "x.json", "--mmhal-images", str(tmp_path)]
    assert cli.main(mm) == 2
    assert "needs an LLM judge" in capsys.readouterr().err
    assert cli.main(["--model", f"x={a}", "--model", f"x={b}", "--data", str(data)]) == 2
    assert "given to more than one model" in capsys.readouterr().err
    assert cli.main(["--model", str(tmp_path / "nowhere"), "--data", str(data)]) == 2
    assert "model folder(s) not found" in capsys.readouterr().err


def test_eval_run_on_published_files(tmp_path: Path, make_tokenizer, capsys) -> None:
    """POPE jsonl files and COCO annotations (the shipped CHAIR synonyms, no --coco-synonyms)."""
    from PIL import Image

    from tests.serve_helpers import save_tiny_checkpoint

    images = tmp_path / "val2014"
    images.mkdir()
    for i in (1, 2, 3):
        Image.new("RGB", (40, 30), ("red", "green", "blue")[i - 1]).save(images / f"COCO_{i}.jpg")
    pope_files = []
    for split in ("random", "adversarial"):
        f = tmp_path / f"coco_pope_{split}.json"
        probes = [
            {"question_id": k, "image": f"COCO_{1 + k % 3}.jpg", "text": "Is there a dog in the image?",
             "label": "yes" if k % 2 else "no"}
            for k in range(6)
        ]  # fmt: skip
        f.write_text("".join(json.dumps(p) + "\n" for p in probes))
        pope_files.append(str(f))
    instances = tmp_path / "instances_val2014.json"
    instances.write_text(
        json.dumps(
            {
                "images": [{"id": i, "file_name": f"COCO_{i}.jpg"} for i in (1, 2, 3)],
                "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 18}],
            }
        )
    )
    ckpt = save_tiny_checkpoint(make_tokenizer(), tmp_path / "runs" / "sft" / "final")
    out = tmp_path / "eval"
    args = [
        "--model", str(ckpt), "--benchmarks", "pope,chair", "--pope", *pope_files, "--pope-images", str(images),
        "--pope-parser", "strict", "--coco-instances", str(instances), "--coco-images", str(images),
        "--max-new-tokens", "8", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    assert _load_cli().main(args) == 0
    res = json.loads((out / "results.json").read_text())["sft/final"]
    assert res["pope"]["source"] == "files" and res["pope"]["parser"] == "strict"
    assert set(res["pope"]) >= {"random", "adversarial", "average"} and res["pope"]["average"]["n"] == 12
    records = json.loads((out / "records" / "sft" / "final" / "pope.json").read_text())
    assert [r["question_id"] for r in records] == list(range(6)) * 2
    assert all((r["read_as"] == "no") or r["fits"] for r in records)  # strict: unread answers are no
    assert res["chair"]["source"] == "coco" and res["chair"]["n_captions"] == 3
    chair_records = json.loads((out / "records" / "sft" / "final" / "chair.json").read_text())
    assert [r["image_id"] for r in chair_records] == [1, 2, 3] and chair_records[0]["truth"] == ["dog"]
    unread = res["pope"]["average"]["n_unparseable"]
    flag = f"{'⚠ ' if unread else ''}{unread} ({unread / 12:.1%})"
    assert f"| POPE answers fitting neither yes nor no | {flag} |" in capsys.readouterr().out
