"""Helpers for tests that need a saved tiny checkpoint or a running chat server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def save_tiny_checkpoint(tokenizer: Any, out: Path, seed: int = 0, context: int | None = None) -> Path:
    """Build the tiny test LMM (as the ``tiny_model`` fixture) with ``seed`` and save it to ``out``."""
    from mmalign.models.builders import tiny_lmm, tiny_vision
    from mmalign.models.checkpoint import save_lmm

    vision = tiny_vision(
        image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64
    )
    model = tiny_lmm(
        tokenizer, vision, llm_hidden_size=48, llm_layers=2, llm_heads=4, llm_intermediate_size=96,
        video_frames=3, seed=seed,
    )  # fmt: skip
    if context is not None:  # rotary positions: a longer declared context is valid for Llama
        model.llm.config.max_position_embeddings = context
    save_lmm(model, tokenizer, out)
    return out


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port in a thread; yields the base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
