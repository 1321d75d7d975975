"""Import layering: the data layer does not import the model layer (models import data, not back)."""

from __future__ import annotations

import subprocess
import sys

from tests.distributed import ROOT


def test_data_modules_do_not_import_models():
    code = (
        "import sys, mmalign.data.formats, mmalign.data.templates, mmalign.data.media, "
        "mmalign.data.processor, mmalign.data.check, mmalign.data.datasets\n"
        "print(sorted(m for m in sys.modules if m.startswith('mmalign.models')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
