"""Every path a README command, a shipped config or a docstring names exists for a user who ran
``make quickstart`` on a fresh clone, or is documented as the user's own.

A named path must be one of:
- a file or folder of the repository (``configs/…``, ``train/…``, ``checkpoints/…``, …);
- something the quickstart creates (``scripts/quickstart.py:outputs``, default or ``--from-scratch``),
  and under ``runs/shapeworld/`` (or ``runs/shapeworld-terse/``) a file the ShapeWorld generator really writes (checked against a
  small generated dataset);
- under the output of a command or config shown in the same material (``--out X``, ``out=X``,
  ``out: X``, ``--runs X``);
- under one of the user's own roots that the README declares (``/ckpt/``, ``/data/``, ``/out/``).
No file may point at the steering folder outside the repository (``../shared/…``): a user's
checkout does not have it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

from tests.distributed import ROOT

USER_ROOTS = ("/ckpt/", "/data/", "/out/")
REPO_ROOTS = (
    "configs",
    "train",
    "eval",
    "data_builders",
    "scripts",
    "benchmarks",
    "mmalign",
    "tests",
    "checkpoints",
)
CODE_DIRS = ("mmalign", "train", "eval", "data_builders", "scripts", "benchmarks")
# A relative path: a known top-level folder, then path characters; not preceded by a path character
# (so ``mmalign/data/x`` is not read as ``data/x``) nor by a dot (``foo.runs/``).
REL_RE = re.compile(r"(?<![\w./{-])(?:runs|" + "|".join(REPO_ROOTS) + r")/[\w.*/{}<>-]*")
ABS_RE = re.compile(r"(?<![\w.:/{-])/[A-Za-z][\w.-]*/[\w.*/{}<>-]*")
OUT_RE = re.compile(r"(?:--out|--runs|\bout=|^\s*out: str = |^\s*out:)\s*\"?([\w./{}-]+)", re.M)
SHARED = ".." + "/shared"  # spelled apart so this file does not flag itself
SHARED_RE = re.compile(r"(?:\.\./)?\bshared/(?:ARCHITECTURE|METHODS|seeds|hooks)")


def _tracked() -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / n for n in names]


def _clean(path: str) -> str:
    return path.rstrip(".,;:)`'\"/}").split("{")[0].split("<")[0].rstrip("/._-")


def _code_blocks(markdown: str) -> str:
    return "\n".join(re.findall(r"```[a-z]*\n(.*?)```", markdown, flags=re.S))


def _yaml_strings(node: object) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _yaml_strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _yaml_strings(v)]
    return [node] if isinstance(node, str) else []


def _material() -> dict[str, tuple[str, str]]:
    """``{source: (text scanned for relative paths, text scanned for absolute paths)}``."""
    readme = (ROOT / "README.md").read_text()
    out = {"README.md": (readme, _code_blocks(readme))}
    for cfg in sorted((ROOT / "configs").rglob("*.yaml")):
        text = cfg.read_text()
        comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
        out[str(cfg.relative_to(ROOT))] = (
            text,
            comments + "\n" + "\n".join(_yaml_strings(yaml.safe_load(text))),
        )
    for folder in CODE_DIRS:
        for py in sorted((ROOT / folder).rglob("*.py")):
            out[str(py.relative_to(ROOT))] = (py.read_text(), "")
    for card in sorted((ROOT / "checkpoints").rglob("README.md")):
        out[str(card.relative_to(ROOT))] = (card.read_text(), _code_blocks(card.read_text()))
    return out


@pytest.fixture(scope="module")
def generated_world(tmp_path_factory) -> Path:
    """A small ShapeWorld dataset made with the quickstart's world config."""
    import json

    from mmalign.shapeworld import WorldConfig, generate

    out = tmp_path_factory.mktemp("world") / "shapeworld"
    cfg = WorldConfig.from_dict(json.loads((ROOT / "configs/shapeworld/world.json").read_text()))
    generate(out, 30, 4, 0, cfg, prior_per_group=2)
    return out


def _quickstart_outputs() -> list[str]:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import quickstart
    finally:
        sys.path.pop(0)
    runs = Path("runs")
    return sorted({str(p) for fs in (False, True) for p in quickstart.outputs(runs, fs)})


def _under(path: str, roots: list[str] | set[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def test_no_file_points_outside_the_checkout():
    offenders = [
        str(p.relative_to(ROOT))
        for p in _tracked()
        if p.is_file()
        and p.suffix in (".py", ".md", ".yaml", ".json", ".txt", ".toml", "")
        and SHARED_RE.search(p.read_text(errors="ignore"))
    ]
    assert not offenders, f"files pointing at {SHARED}/ (not in a user's checkout): {offenders}"


def test_readme_declares_the_user_roots_and_the_venv():
    readme = (ROOT / "README.md").read_text()
    for root in USER_ROOTS:
        assert f"`{root}`" in readme, f"the README must say that {root} stands for the user's own folders"
    assert "source .venv/bin/activate" in readme, "the README must say how its commands find the venv"


def test_every_named_path_exists_or_is_made(generated_world):
    material = _material()
    made = set(_quickstart_outputs())
    for rel_text, abs_text in material.values():
        # "--runs runs" (the quickstart's own folder) is covered by quickstart.outputs(), path by path.
        made |= {c for m in OUT_RE.findall(rel_text + "\n" + abs_text) if "/" in (c := _clean(m))}
    world_files = {str(p.relative_to(generated_world)) for p in generated_world.rglob("*")}
    problems = []
    for source, (rel_text, abs_text) in material.items():
        for raw in REL_RE.findall(rel_text):
            path = _clean(raw)
            if not path or path.count("/") == 0:
                continue
            top = path.split("/")[0]
            looks_like_file = raw.rstrip(".,;:)`'\"").endswith("/") or "." in path.rsplit("/", 1)[-1]
            if top in REPO_ROOTS and top != "checkpoints" and not looks_like_file:
                continue  # e.g. a metric name such as eval/accuracy
            if top in REPO_ROOTS and top != "checkpoints" or path.startswith("checkpoints/tiny-shapeworld"):
                if "*" in path:
                    ok = any(fnmatch(str(p.relative_to(ROOT)), path) for p in (ROOT / top).rglob("*"))
                else:
                    ok = (ROOT / path).exists() or _under(path, made)
                if not ok:
                    problems.append(f"{source}: {raw} is not in the repository")
            elif dataset := re.match(r"runs/shapeworld(-terse)?/", path):  # the recipe's two datasets
                inner = path[dataset.end() :]
                ok = inner in world_files or any(fnmatch(f, inner) for f in world_files)
                ok = ok or _under(path, made - {"runs/shapeworld", "runs/shapeworld-terse"})
                if not ok and re.fullmatch(r"images/img_\d+_\d+\.png", inner):
                    ok = any(re.fullmatch(r"images/img_\d+_\d+\.png", f) for f in world_files)
                if not ok:
                    problems.append(f"{source}: {raw} is not written by the ShapeWorld generator")
            elif top == "runs":
                if not _under(path, made):
                    problems.append(
                        f"{source}: {raw} is made neither by the quickstart nor by a shown command"
                    )
            elif top == "checkpoints" and not source.endswith(".py"):  # .py: a run folder's checkpoints/
                problems.append(f"{source}: {raw} is not in the repository (a user path goes under /ckpt/)")
        for raw in ABS_RE.findall(abs_text):
            path = _clean(raw)
            if path.startswith(("/v1/", "/dev/", "/tmp/", "/usr/")) or path.count("/") < 2:
                continue
            if not path.startswith(USER_ROOTS) and not _under(path, made):
                problems.append(f"{source}: {raw} is neither under {USER_ROOTS} nor made by a shown command")
    assert not problems, "\n".join(sorted(set(problems)))


def test_readme_record_examples_load_with_their_readers():
    """Each example record of the README's "Bring your own model" section is read as its format says."""
    from mmalign.data.formats import record_to_example
    from mmalign.preference.formats import record_to_pair

    readme = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"```jsonc\n(.*?)```", readme, flags=re.S)
    records, fmt, buf = [], None, ""
    for line in block.splitlines():
        if line.startswith("//"):
            m = re.search(r"format: (\w+)", line)
            fmt = m.group(1) if m else ("llava" if "SFT — LLaVA" in line else fmt)
            continue
        buf += line
        try:
            records.append((fmt, json.loads(buf)))
            buf = ""
        except json.JSONDecodeError:
            continue
    assert buf == "" and [f for f, _ in records] == ["llava", "lrv", "povid", "llava_rlhf", "hound", "trl"]
    for i, (fmt, rec) in enumerate(records):
        where = f"README.md jsonc record {i}"
        if fmt in ("llava", "lrv"):
            ex = record_to_example(rec, Path("/data"), where, fmt)
            assert ex.images and ex.messages[-1]["role"] == "assistant"
            assert ex.messages[0]["content"].startswith("<image>")
        else:
            pair = record_to_pair(rec, Path("/data"), where, fmt)
            assert pair.chosen and pair.rejected and pair.chosen != pair.rejected
            assert pair.images or pair.videos
