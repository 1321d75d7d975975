"""Fact-RLHF on ShapeWorld: PPO prompts, the SFT model's judged preference pairs, reward-model accuracy.

Launch (the data of the study; the train split is the one the shipped model was trained on)::

    python -m mmalign.shapeworld generate --out runs/rlhf_world --n-images 8000 --seed 0 \
        --config configs/shapeworld/world.json
    # 1. PPO prompts (+ the control's SFT records): runs/rlhf_world/ppo_prompts/{train,test}.jsonl,
    #    control_sft.json (the noisy train annotation's answers), control_sft_clean.json (exact)
    python data_builders/shapeworld_rlhf.py prompts --data runs/rlhf_world --out runs/rlhf_world
    # 2. the SFT model's sampled answers, judged: runs/rlhf_world/rlhf_prefs/{train,test}.jsonl;
    #    and test_truth.jsonl: ("yes", "no") pairs of test existence questions, preferred by truth
    python data_builders/shapeworld_rlhf.py prefs --data runs/rlhf_world --out runs/rlhf_world \
        --model checkpoints/tiny-shapeworld --k 2
    #    (--balanced: also train_balanced.jsonl = train.jsonl + a ("yes", "no") pair preferred by truth for
    #    each existence question of the other scenes: the SFT model almost never errs on a present shape,
    #    so its own pairs all prefer "no", and a reward model trained on them alone prefers "no" always)
    # 3. both reward models, then their accuracy on the test-split pairs
    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 deepspeed --num_gpus 2 train/reward.py --config configs/reward/tiny_shapeworld_rlhf_fact.yaml
    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 deepspeed --num_gpus 2 train/reward.py --config configs/reward/tiny_shapeworld_rlhf_plain.yaml
    python data_builders/shapeworld_rlhf.py eval --data runs/rlhf_world \
        --rm fact=runs/rlhf_rm_fact/final:configs/prompts/fact_rlhf_reward.txt \
        --rm plain=runs/rlhf_rm_plain/final:configs/prompts/rlhf_reward_plain.txt
    python data_builders/shapeworld_rlhf.py eval --data runs/rlhf_world --prefs runs/rlhf_world/rlhf_prefs/test_truth.jsonl \
        --rm fact=runs/rlhf_rm_fact/final:configs/prompts/fact_rlhf_reward.txt \
        --rm plain=runs/rlhf_rm_plain/final:configs/prompts/rlhf_reward_plain.txt

Each step prints its counts as JSON and writes them next to its outputs (``*/stats.json``).
The logic is :mod:`mmalign.shapeworld.rlhf`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mmalign.shapeworld import rlhf


def cmd_prompts(args: argparse.Namespace) -> dict:
    out, stats = Path(args.out) / "ppo_prompts", {}
    for split in ("train", "test"):
        recs = rlhf.rl_prompts(
            args.data, split, args.max_violating if split == "train" else None, args.other, args.seed
        )
        rlhf.write_jsonl(out / f"{split}.jsonl", recs)
        stats[split] = {
            "prompts": len(recs),
            **{
                f"{t}/{g}": sum(r["task"] == t and r["group"] == g for r in recs)
                for t in rlhf.TASKS
                for g in rlhf.GROUPS
            },
            "existence_yes": sum(r.get("answer") == "yes" for r in recs),
        }
        if split == "train":
            for name, exact in (("control_sft.json", False), ("control_sft_clean.json", True)):
                control = rlhf.control_records(recs, args.data, split, exact=exact)
                (out / name).write_text(json.dumps(control))
                clean = {r["id"]: r for r in rlhf.control_records(recs, args.data, split, exact=True)}
                stats[split][f"{name}: answers differing from the exact ones"] = sum(
                    r["conversations"][-1]["value"] != clean[r["id"]]["conversations"][-1]["value"]
                    for r in control
                )
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    return stats


def cmd_prefs(args: argparse.Namespace) -> dict:
    import torch

    from mmalign.data.processor import MultimodalProcessor
    from mmalign.models.checkpoint import load_model

    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args.model, torch.float32)
    processor = MultimodalProcessor.for_model(model, tokenizer)
    cfg, stats = rlhf.world_config(args.data), {}
    out = Path(args.out) / "rlhf_prefs"
    for split in ("train", "test"):
        prompts = rlhf.read_jsonl(Path(args.prompts or Path(args.out) / "ppo_prompts") / f"{split}.jsonl")
        scenes = {s.id: s for s in rlhf.load_scenes(args.data, split)}
        t0 = time.time()
        records, s = rlhf.collect_preferences(
            model,
            processor,
            prompts,
            scenes,
            cfg,
            args.data,
            args.k,
            args.seed + (split == "test"),
            args.batch_size,
        )
        s["seconds"] = round(time.time() - t0, 1)
        rlhf.write_jsonl(out / f"{split}.jsonl", records)
        stats[split] = s
    if args.balanced:  # the own pairs + a (yes, no) truth pair per existence question of other scenes
        train = rlhf.read_jsonl(out / "train.jsonl")
        prompts = rlhf.read_jsonl(Path(args.prompts or Path(args.out) / "ppo_prompts") / "train.jsonl")
        train += rlhf.truth_pairs([p for p in prompts if p["group"] == "other"])
        rlhf.write_jsonl(out / "train_balanced.jsonl", train)
        stats["train_balanced"] = {
            "pairs": len(train),
            "yes_preferred": sum(r.get("answer") == "yes" for r in train),
        }
    # a probe of correctness vs answer word: every violating test scene and 5 other scenes each
    probes = rlhf.truth_pairs(rlhf.rl_prompts(args.data, "test", None, 5.0, args.seed))
    rlhf.write_jsonl(out / "test_truth.jsonl", probes)
    stats["test_truth"] = {"pairs": len(probes), "yes_preferred": sum(r["preference"] == 1 for r in probes)}
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    return stats


def cmd_eval(args: argparse.Namespace) -> dict:
    results = {}
    for spec in args.rm:
        name, rest = spec.split("=", 1)
        model_dir, _, prompt = rest.partition(":")
        t0 = time.time()
        results[name] = rlhf.reward_accuracy_by_group(
            model_dir,
            args.prefs or Path(args.data) / "rlhf_prefs" / "test.jsonl",
            args.data,
            prompt or None,
            args.max_length,
            args.seed,
        )
        results[name]["seconds"] = round(time.time() - t0, 1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prompts", help="PPO prompts and the control's SFT records")
    p.add_argument("--data", required=True, help="a dataset from `python -m mmalign.shapeworld generate`")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--max-violating", type=int, default=None, help="violating train scenes kept (default: all)"
    )
    p.add_argument("--other", type=float, default=1.0, help="other scenes per violating scene")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_prompts)
    p = sub.add_parser("prefs", help="sample the SFT model, judge, write LLaVA-RLHF preference records")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--prompts", help="folder of {train,test}.jsonl (default OUT/ppo_prompts)")
    p.add_argument("--model", default="checkpoints/tiny-shapeworld")
    p.add_argument("--k", type=int, default=2, help="samples per prompt")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--balanced", action="store_true", help="also write train_balanced.jsonl (see the docstring)"
    )
    p.set_defaults(fn=cmd_prefs)
    p = sub.add_parser("eval", help="reward-model accuracy on preference records, by task and group")
    p.add_argument("--data", required=True, help="media root")
    p.add_argument("--rm", action="append", required=True, help="NAME=MODEL_DIR[:REWARD_PROMPT] (repeatable)")
    p.add_argument("--prefs", help="default DATA/rlhf_prefs/test.jsonl")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--seed", type=int, default=0, help="the reward run's seed (caption shuffling)")
    p.add_argument("--out", help="write the results as JSON here")
    p.set_defaults(fn=cmd_eval)
    args = parser.parse_args(argv)
    print(json.dumps(args.fn(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
