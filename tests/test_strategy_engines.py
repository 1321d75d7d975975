"""The strategy holds its engines explicitly (issue 14), checked in one real DeepSpeed process
(ZeRO-3, world 1, no parameter kept resident) by ``tests/strategy_worker.py``:

* gradient checkpointing needs the modules named (``checkpointing=``): without them ``prepare``
  refuses with a message; with them the LLM checkpoints; ``blank_media=`` sets the media rule;
* a policy and a value model as two trainable engines, a frozen reference as a ZeRO-3 inference
  engine (unchanged by the others' steps); ``describe`` names them;
* one checkpoint holds both trainable engines (the value one under ``<tag>/value``): a step
  after the save is undone by the load;
* ``generation_weights`` gathers once: full weights inside, no ``synced_gpus`` needed, the same
  tokens as layer-by-layer gathering, partitioned again after; and on 2 ranks
  (``tests/generation_weights_worker.py``) the ranks stop decoding at different lengths without
  hanging, then train a step together.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.distributed import ROOT, dist_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    from mmalign.data.tokenizer import train_bpe_tokenizer
    from mmalign.models.builders import tiny_lmm, tiny_vision
    from mmalign.models.checkpoint import save_lmm
    from tests.conftest import CORPUS

    root = tmp_path_factory.mktemp("engines")
    tok = train_bpe_tokenizer(CORPUS, vocab_size=320)
    vision = tiny_vision(
        image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64
    )
    save_lmm(
        tiny_lmm(tok, vision, llm_hidden_size=48, llm_layers=2, llm_heads=4, llm_intermediate_size=96),
        tok,
        root / "base",
    )
    cmd = [sys.executable, str(ROOT / "tests" / "strategy_worker.py"), str(root / "base"), str(root)]
    proc = subprocess.run(cmd, cwd=ROOT, env=dist_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return json.loads((root / "result.json").read_text())


def test_model_rules_are_explicit(result):
    assert "no module to checkpoint" in result["no_modules_error"]
    assert result["checkpointing"] and result["blank_media"]


def test_several_engines_and_one_checkpoint(result):
    assert "gradient checkpointing in 2 module(s)" in result["describe"]  # policy and value LLMs
    assert result["describe"].endswith("engines policy, value, reference (frozen)")
    assert result["ref_unchanged"]
    assert result["value_restored"]
    assert result["client_state"] == {"step": 1, "tag": "step_000001"}
    assert result["ckpt_files"] == ["step_000001", "step_000001/value"]


def test_generation_gathers_once(result):
    assert result["full_inside"] and result["partitioned_after"]
    assert result["synced_inside"] is False
    assert result["generate_equal"]


@pytest.mark.multiproc
def test_generation_weights_lets_two_ranks_stop_at_different_lengths(tmp_path):
    """ZeRO-3, 2 ranks, nothing resident: inside the context each rank decodes on its own
    (rank 0 stops after 1 token, rank 1 runs 12) without synced_gpus; without the gather-once the
    rank still decoding would wait for the other's all-gathers forever. Then both train a step."""
    from mmalign.data.tokenizer import train_bpe_tokenizer
    from mmalign.models.builders import tiny_lmm, tiny_vision
    from mmalign.models.checkpoint import save_lmm
    from tests.conftest import CORPUS
    from tests.distributed import run, torchrun_cmd

    tok = train_bpe_tokenizer(CORPUS, vocab_size=320)
    vision = tiny_vision(
        image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64
    )
    model = tiny_lmm(tok, vision, llm_hidden_size=48, llm_layers=2, llm_heads=4, llm_intermediate_size=96)
    save_lmm(model, tok, tmp_path / "base")
    worker = ROOT / "tests" / "generation_weights_worker.py"
    run(torchrun_cmd(worker, [str(tmp_path / "base"), str(tmp_path)]), timeout=180)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["synced"] for r in ranks] == [False, False]
    assert [r["length"] for r in ranks] == [1, 12]
    assert all(r["loss"] > 0 for r in ranks)
