"""The chat demo: an OpenAI-compatible server (``/v1/chat/completions``, ``/v1/models``) with a web UI.

:mod:`.protocol` parses and checks requests, :mod:`.engine` runs the model (one queued worker,
token streaming), :mod:`.app` is the FastAPI app; the CLI is ``eval/chat.py``.
"""
