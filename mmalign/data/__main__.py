"""``python -m mmalign.data check FILE --model DIR``: validate data files as a trainer would load them.

Runs :func:`mmalign.data.check.check_dataset` — the same checks ``train/sft.py``, ``train/dpo.py``
and ``train/reward.py`` run before training — and prints the report: counts by reason and every
rejected or skipped record with its ``file:line`` and id. Exit status: 0 when the data would train,
1 when a trainer would refuse it (or nothing is left), 2 when a file is missing.

Examples::

    python -m mmalign.data check runs/shapeworld/llava/train.json --model checkpoints/tiny-shapeworld --max-length 256
    python -m mmalign.data check filter_cap.json --format lrv --media-root /data/vg/images --model runs/sft/final
    python -m mmalign.data check runs/povid/povid.jsonl --media-root runs/shapeworld --model runs/sft/final
    # a trainer's config: its sources, model, template, max_length and data_checks (+ key=value overrides)
    python -m mmalign.data check --config configs/dpo/tiny_shapeworld.yaml --trainer dpo max_length=128
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mmalign.data.check import POLICIES, check_dataset
from mmalign.data.formats import RECORD_FORMATS, RecordError, iter_json_records, load_records

PREFERENCE_FORMATS = ("povid", "llava_rlhf", "hound", "trl")


def _kind(path: str, fmt: str) -> str:
    """``sft`` or ``preference``, from ``--format`` or the first record's keys."""
    if fmt in RECORD_FORMATS:
        return "sft"
    if fmt in PREFERENCE_FORMATS:
        return "preference"
    from mmalign.preference.formats import detect_format

    for _, rec in iter_json_records(path):
        return "preference" if isinstance(rec, dict) and detect_format(rec) else "sft"
    return "sft"


def _load(path: str, fmt: str, media_root: str | None) -> list[Any]:
    if _kind(path, fmt) == "sft":
        return load_records(path, media_root, fmt if fmt in RECORD_FORMATS else "auto")  # type: ignore[arg-type]
    from mmalign.preference.formats import load_preferences

    return load_preferences(path, fmt if fmt in PREFERENCE_FORMATS else "auto", media_root)  # type: ignore[arg-type]


def _processor(model_dir: str, template: str | None = None) -> Any:
    from mmalign.data.processor import MultimodalProcessor
    from mmalign.models.checkpoint import load_model

    model, tokenizer = load_model(model_dir)
    return MultimodalProcessor.for_model(model, tokenizer, template)


def _report(name: str, records: list[Any], processor: Any, args: argparse.Namespace, **kw: Any) -> int:
    """Check, print the report; 1 when a trainer would refuse the data, else 0."""
    kept, report = check_dataset(
        records, processor, kw.pop("max_length", args.max_length), kw.pop("policy", args.policy),
        media_headers=not args.no_headers, raise_errors=False, **kw,
    )  # fmt: skip
    print(f"[data] {name}")
    print(report.summary(args.limit))
    if args.report:
        out = Path(args.report)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(json.dumps({"file": name, **report.to_dict()}) + "\n")
    if report.errors:
        print(report.error_text(args.limit), file=sys.stderr)
        return 1
    if not kept:
        print(f"[data] {name}: no record left to train on", file=sys.stderr)
        return 1
    return 0


def _check_config(args: argparse.Namespace) -> int:
    """The data of a trainer config, checked as that trainer will (its model, template, max_length)."""
    from mmalign.config import load_config

    if args.trainer == "sft":
        from mmalign.data.datasets import load_mixture
        from mmalign.training.sft_config import SFTConfig

        cfg: Any = load_config(SFTConfig, args.config, args.files)
        records, encode = load_mixture(cfg.data), None
        processor = _processor(cfg.model, getattr(cfg, "template", None))
    else:
        from mmalign.preference.batch import encode_pair
        from mmalign.preference.config import DPOConfig, RewardConfig, load_sources
        from mmalign.preference.reward_model import reward_suffix

        cfg = load_config(DPOConfig if args.trainer == "dpo" else RewardConfig, args.config, args.files)
        records = load_sources(cfg.data)
        processor = _processor(cfg.model, getattr(cfg, "template", None))
        prompt = getattr(cfg, "reward_prompt", None)
        template = Path(prompt).read_text().strip() if prompt else None

        def encode(pair: Any) -> Any:
            suffix = reward_suffix(template, pair, cfg.seed) if template else None
            return encode_pair(processor, pair, cfg.max_length, suffix=suffix, load_media=False)

    name = f"{args.config} ({args.trainer}: {', '.join(s.path for s in cfg.data)})"
    return _report(
        name, records, processor, args, max_length=cfg.max_length, policy=cfg.data_checks, encode=encode
    )


def check_main(args: argparse.Namespace) -> int:
    if args.config:
        try:
            return _check_config(args)
        except FileNotFoundError as exc:
            print(f"[data] {exc}", file=sys.stderr)
            return 2
        except RecordError as exc:  # a record the reader cannot convert: the trainer stops on it too
            print(f"[data] data check failed: [malformed] {exc}", file=sys.stderr)
            return 1
    processor = _processor(args.model) if args.model else None
    status = 0
    for path in args.files:
        try:
            records = _load(path, args.format, args.media_root)
        except FileNotFoundError as exc:
            print(f"[data] {exc}", file=sys.stderr)
            status = max(status, 2)
            continue
        except RecordError as exc:  # a record the reader cannot convert: the trainer stops on it too
            print(f"[data] data check failed: [malformed] {exc}", file=sys.stderr)
            status = max(status, 1)
            continue
        status = max(status, _report(path, records, processor, args))
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmalign.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate data files (SFT or preference) as the trainers load them")
    check.add_argument(
        "files", nargs="*", help="JSON / JSONL data files (with --config: key=value overrides)"
    )
    check.add_argument(
        "--config",
        help="a trainer's YAML: check its data with its model, template, max_length and data_checks",
    )
    check.add_argument(
        "--trainer", choices=("sft", "dpo", "reward"), default="sft", help="whose config --config is"
    )
    check.add_argument(
        "--model",
        help="checkpoint whose processor tokenises the records (without it: structure and media only)",
    )
    check.add_argument(
        "--format",
        default="auto",
        choices=("auto", *RECORD_FORMATS, *PREFERENCE_FORMATS),
        help="record format (auto: SFT or preference, from the records' keys)",
    )
    check.add_argument(
        "--media-root", default=None, help="media paths are relative to it (default: the file's folder)"
    )
    check.add_argument(
        "--max-length", type=int, default=None, help="the trainer's max_length (default: no limit)"
    )
    check.add_argument("--policy", default="skip", choices=POLICIES, help="the trainer's data_checks")
    check.add_argument(
        "--no-headers", action="store_true", help="only check media files exist (do not open them)"
    )
    check.add_argument("--limit", type=int, default=20, help="records listed per category")
    check.add_argument("--report", default=None, help="append the full report (JSON line per file) here")
    args = parser.parse_args(argv)
    if not args.config and not args.files:
        parser.error("give data files, or --config FILE")
    return check_main(args)


if __name__ == "__main__":
    sys.exit(main())
