"""The generic engine knows nothing of ShapeWorld: importing every module of mmalign.training (in a
fresh interpreter) loads no mmalign.shapeworld module; the tiny recipe's stages live beside the world."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.distributed import ROOT

PROBE = """
import importlib, json, pkgutil, sys
import mmalign.training as t
for m in pkgutil.iter_modules(t.__path__):
    importlib.import_module('mmalign.training.' + m.name)
print(json.dumps(sorted(k for k in sys.modules if k.startswith(('mmalign.training', 'mmalign.shapeworld')))))
"""


def test_training_engine_imports_no_shapeworld():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    assert "mmalign.training.run" in loaded and "mmalign.training.strategy" in loaded
    assert [m for m in loaded if m.startswith("mmalign.shapeworld")] == []
    # the recipe's stages moved beside the world
    assert not any(
        (ROOT / "mmalign" / "training" / f).exists() for f in ("stage0.py", "temporal.py", "tiny_preset.py")
    )
    assert (ROOT / "mmalign" / "shapeworld" / "recipe" / "stage0.py").exists()
