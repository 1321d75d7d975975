"""The chat server names its model as ``eval/run.py`` does: ``--model NAME=DIR`` or the path."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_chat_cli():
    spec = importlib.util.spec_from_file_location("eval_chat", ROOT / "eval" / "chat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_tokenizer) -> Path:
    from tests.serve_helpers import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("naming") / "runs"
    save_tiny_checkpoint(make_tokenizer(), root / "dpo" / "final")
    return root


@pytest.mark.parametrize(
    ("spec", "name", "served_as"),
    [("tiny-dpo={dir}", None, "tiny-dpo"), ("{dir}", None, "dpo/final"), ("{dir}", "given", "given")],
)
def test_served_model_id_everywhere(runs: Path, spec: str, name: str | None, served_as: str) -> None:
    from openai import NotFoundError, OpenAI

    from mmalign.serve.app import create_app
    from tests.serve_helpers import running_server

    cli = _load_chat_cli()
    args = argparse.Namespace(model=spec.format(dir=runs / "dpo" / "final"), name=name, max_queue=4)
    engine = cli._engine(args)
    assert engine.model_name == served_as
    with running_server(create_app(engine)) as url:
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == [served_as]
        messages = [{"role": "user", "content": "hi"}]
        reply = client.chat.completions.create(model=served_as, messages=messages, max_tokens=3)
        assert reply.model == served_as
        chunks = list(
            client.chat.completions.create(model=served_as, messages=messages, max_tokens=3, stream=True)
        )
        assert chunks and {c.model for c in chunks} == {served_as}
        with pytest.raises(NotFoundError, match=f"use '{served_as}'"):  # not the folder's name
            client.chat.completions.create(model="final", messages=messages, max_tokens=3)


def test_chat_cli_refuses_bad_model_specs(runs: Path, capsys) -> None:
    cli = _load_chat_cli()
    assert cli.main(["serve", "--model", f"x={runs / 'nowhere'}"]) == 2
    assert "model folder not found" in capsys.readouterr().err
    assert cli.main(["chat", "--model", f"={runs / 'dpo' / 'final'}", "--prompt", "hi"]) == 2
    assert "expected NAME=DIR or DIR" in capsys.readouterr().err
    assert cli.model_name_and_dir(str(runs / "dpo" / "final")) == ("dpo/final", runs / "dpo" / "final")
