"""Command-line options every builder shares (inputs, output, resume, back-end, LLM endpoint)."""

from __future__ import annotations

import argparse
from typing import Any

from mmalign.builders.llm_backend import LLMBackend


def add_common(parser: argparse.ArgumentParser) -> None:
    """Inputs, output folder, seed, batching and the generator back-end."""
    parser.add_argument("inputs", nargs="+", help="JSON or JSONL files, streamed in order")
    parser.add_argument(
        "--out", required=True, help="output folder (re-running resumes; other arguments are refused)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="stop after N source records")
    parser.add_argument(
        "--batch-size", type=int, default=256, help="records per build call (LLM: per concurrent batch)"
    )
    parser.add_argument("--commit-every", type=int, default=512, help="records per crash-safe commit")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--backend", choices=("rules", "llm"), default="rules")
    llm = parser.add_argument_group("LLM back-end (key from MMALIGN_LLM_API_KEY or OPENAI_API_KEY)")
    llm.add_argument(
        "--llm-base-url", default=None, help="e.g. http://127.0.0.1:8000/v1 (else MMALIGN_LLM_BASE_URL)"
    )
    llm.add_argument("--llm-model", default=None, help="else MMALIGN_LLM_MODEL")
    llm.add_argument("--llm-concurrency", type=int, default=4)
    llm.add_argument("--llm-retries", type=int, default=4)
    llm.add_argument("--llm-timeout", type=float, default=120.0)
    llm.add_argument("--llm-max-tokens", type=int, default=1024)
    llm.add_argument("--llm-no-images", action="store_true", help="send text only (text-only endpoints)")


def llm_backend(args: argparse.Namespace) -> LLMBackend | None:
    """The LLM back-end when ``--backend llm``, else None."""
    if args.backend != "llm":
        return None
    return LLMBackend.from_args(
        args.llm_base_url,
        args.llm_model,
        concurrency=args.llm_concurrency,
        max_retries=args.llm_retries,
        timeout=args.llm_timeout,
        max_tokens=args.llm_max_tokens,
        send_images=not args.llm_no_images,
    )


def run_params(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """What identifies a run (stored in ``params.json``): everything but batching, progress and limits."""
    skip = {
        "out",
        "limit",
        "batch_size",
        "commit_every",
        "no_progress",
        "llm_concurrency",
        "llm_timeout",
        "llm_retries",
    }
    return {**{k: v for k, v in vars(args).items() if k not in skip and not callable(v)}, **extra}


def run_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`mmalign.builders.runner.run_builder` from the shared options."""
    llm = args.backend == "llm"
    batch = min(args.batch_size, 4 * args.llm_concurrency) if llm else args.batch_size
    return {
        "batch_size": batch,
        "commit_every": min(args.commit_every, batch) if llm else args.commit_every,  # LLM replies are costly
        "limit": args.limit,
        "progress": not args.no_progress,
    }
