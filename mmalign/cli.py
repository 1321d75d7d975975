"""The command line shared by the trainers: ``--config``, ``key=value`` overrides, ``--print-config``,
``--dry-run``.

    python train/sft.py --print-config            # every field: dotted name, type, default, meaning
    python train/sft.py --config c.yaml --dry-run # the first 3 records as the model will see them
    python train/sft.py --config c.yaml optim.lr=1e-4 max_steps=100

A config error (an unknown key — the valid ones are listed, closest first — or a bad value) is
printed as one message with the usage line and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TypeVar

from mmalign.config import ConfigError, format_fields, load_config

T = TypeVar("T")


def run_parser(description: str, dry_run: bool = True) -> argparse.ArgumentParser:
    """The trainers' argument parser (``--local_rank`` is accepted for the deepspeed launcher).

    Args:
        dry_run: offer ``--dry-run`` (scripts that do not train on records leave it out).
    """
    parser = argparse.ArgumentParser(
        description=description,
        epilog="--print-config lists every config field with its type, default and meaning.",
    )
    parser.add_argument("--config", help="YAML file with the config's fields")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="list every config field (type, default, meaning) and exit",
    )
    if dry_run:
        parser.add_argument(
            "--dry-run",
            nargs="?",
            type=int,
            const=3,
            default=None,
            metavar="N",
            help="render the first N records (default 3) with targets marked [[...]] and media token "
            "counts, then exit (no DeepSpeed)",
        )
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by deepspeed
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-4 max_steps=100")
    return parser


def parse_run_args(
    config_cls: type[T], description: str, argv: list[str] | None = None, dry_run: bool = True
) -> tuple[Any, T]:
    """Parse a trainer's command line into ``(args, config)``.

    ``--print-config`` prints :func:`~mmalign.config.format_fields` and exits 0; a config error
    exits 2 with its message (no traceback).

    Returns:
        ``args`` (with ``dry_run``: None or the number of records to render) and the config.

    Raises:
        SystemExit: after ``--print-config`` (0) or on a config error (2).
    """
    parser = run_parser(description, dry_run)
    args = parser.parse_args(argv)
    args.dry_run = getattr(args, "dry_run", None)
    if args.print_config:
        print(format_fields(config_cls))
        raise SystemExit(0)
    if args.dry_run is not None and args.dry_run < 1:
        parser.error("--dry-run N needs N ≥ 1")
    try:
        cfg = load_config(config_cls, args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as exc:
        parser.print_usage(sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return args, cfg
