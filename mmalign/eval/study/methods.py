"""Each method of the study as the commands that build its data and train it (no work at import).

A method kind (``MethodEntry.method``) maps to a planner that returns :class:`Command` s: builders
(``data_builders/*.py``, ``python -m ...``) run once per study and regime, then the real training
scripts (``train/sft.py``, ``train/dpo.py``, ``train/reward.py``, ``train/ppo.py``) launched under
DeepSpeed with ``key=value`` overrides. A command whose ``done`` path exists is skipped, so a killed
study resumes; a training run is done when its ``final/`` exists.

What each method gets, per regime (issue 18: "what its paper assumes"):

- ``control``: SFT continued on the regime's annotations (noisy ``llava/train.json`` or exact
  ``llava/train_clean.json``), the first ``steps × batch`` records, one pass
  (``configs/shapeworld/control.yaml``).
- ``lrv``: the same SFT on the regime's annotations mixed with LRV-Instruction positive and
  negative instructions at 1:1 (``data_builders/lrv.py`` on the exact scene graphs — the stand-in
  for LRV's dense Visual-Genome captions); ``options.share`` of the examples are LRV's
  (https://arxiv.org/abs/2306.14565).
- ``povid``: POVID's two stages (https://arxiv.org/abs/2402.11411): stage 1 DPO on (regime
  annotation, injected hallucination) pairs (``configs/dpo/tiny_shapeworld.yaml``), stage 2 the
  two-term loss with the diffusion-noised image's answer (``configs/dpo/tiny_shapeworld_povid.yaml``);
  pairs from ``data_builders/povid.py`` on the regime's annotations (chosen = those annotations).
  ``options.stage1_share`` of the steps go to stage 1.
- ``dpo``: DPO + SFT term on ShapeWorld (annotation, injected hallucination) pairs
  (``mmalign.preference.shapeworld_pairs``; ``configs/dpo/tiny_shapeworld.yaml``): in the noisy
  regime the chosen answers follow the noisy training annotation (``--annotation noisy``: the
  invented partners named), in the clean one the exact scene graphs.
- ``align2llava``: Align²LLaVA (https://arxiv.org/abs/2409.18541): two Bradley–Terry reward models
  on a small exact-labelled subset (``data_builders/align2llava.py pairs``, ``train/reward.py``), the
  regime's first ``options.corpus`` records scored and cascaded to ``options.keep``, then SFT on
  the curated subset (``options.subset: curated``) or on the whole corpus (``full``), same steps.
  No style rewriting (``--rewrite none``: the inner-LLM rewrite of the tiny model is a no-op here).
- ``rl``: ``train/ppo.py`` (``configs/ppo/tiny_shapeworld.yaml``; ``options.preset``: ``none`` =
  PPO, ``remax``, ``rloo``, ``grpo``) on ``data_builders/shapeworld_rlhf.py prompts``, with the exact
  judge as reward (``reward_fns:shapeworld_judge`` — an annotator who sees the scene, so exact) or
  ``options.reward_model`` (a Fact-RM trained as in that builder's docstring). ``steps`` must be
  iterations × optimizer steps per iteration and ``batch`` the responses per optimizer step
  (step batch of prompts × ``num_samples``). ``options.reward_model: build`` (noisy regime only)
  has the study build that Fact-RM itself, once per study (:func:`plan_fact_rm`): LLaVA-RLHF's
  preferences (https://arxiv.org/abs/2309.14525) from a simulated annotator who sees the scene,
  on the SFT model's own sampled answers, and a reward model that reads the exact captions.
- ``isrt``: i-SRT from a judge/revise format continuation, nothing but its own judgments, and the
  control matched to each run after it (``options.match``): :mod:`mmalign.eval.study.isrt`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from mmalign.eval.study.config import MethodEntry

CONTROL_CONFIG = "configs/shapeworld/control.yaml"
DPO_CONFIG = "configs/dpo/tiny_shapeworld.yaml"
POVID_CONFIG = "configs/dpo/tiny_shapeworld_povid.yaml"
REWARD_CONFIG = "configs/reward/tiny_shapeworld.yaml"
PPO_CONFIG = "configs/ppo/tiny_shapeworld.yaml"
FACT_RM_CONFIG = "configs/reward/tiny_shapeworld_rlhf_fact.yaml"
FACT_PROMPT = "configs/prompts/fact_rlhf_reward.txt"
#: ``options.reward_model`` value asking the study to build the Fact-RM (:func:`plan_fact_rm`).
BUILD = "build"
JUDGE = '[{spec: "mmalign.rl.reward_fns:shapeworld_judge"}]'


@dataclass(frozen=True)
class Command:
    """One subprocess of the study.

    Attributes:
        argv: the script (a path under the repository, or ``-m module``) and its arguments.
        done: skip the command when this path exists.
        ranks: 0 for a plain ``python`` process, else DeepSpeed ranks.
        log: where its stdout/stderr go.
        run: the training run folder (its ``metrics.jsonl`` gives the cost), if it trains.
    """

    argv: tuple[str, ...]
    done: Path
    ranks: int = 0
    log: Path | None = None
    run: Path | None = None


@dataclass(frozen=True)
class Context:
    """Where things are: the SFT model, the training dataset, built data and run folders."""

    model: Path
    train: Path
    work: Path
    runs: Path
    ranks: int


@dataclass
class Plan:
    """A trained row (entry × regime × seed): its commands and the checkpoint to measure."""

    entry: str
    regime: str
    seed: int
    commands: list[Command] = field(default_factory=list)
    final: Path | None = None
    budget: Path | None = None  # a matched row's measured steps and pairs (JSON), once it ran

    @property
    def runs(self) -> list[Path]:
        """The training run folders of this row's commands (their metrics give its cost)."""
        return [c.run for c in self.commands if c.run is not None]


def annotations(ctx: Context, regime: str) -> Path:
    """The regime's SFT annotations: noisy ``llava/train.json`` or exact ``llava/train_clean.json``."""
    return ctx.train / "llava" / ("train.json" if regime == "noisy" else "train_clean.json")


def _source(path: Path, media_root: Path, max_records: int | None = None) -> dict:
    src: dict = {"path": str(path), "media_root": str(media_root)}
    if max_records is not None:
        src["max_records"] = max_records
    return src


def _budget(entry: MethodEntry, ranks: int, steps: int | None = None) -> list[str]:
    """Overrides shared by a method and its control: steps, batch, warmup, seed-independent logging."""
    steps = steps if steps is not None else entry.steps
    return [
        f"max_steps={steps}",
        f"strategy.micro_batch_size={entry.batch // ranks}",
        "strategy.grad_accum=1",
        f"optim.warmup_steps={max(1, min(10, steps // 10))}",
        "save_every=0",
        f"log_every={max(1, min(10, steps // 5))}",
    ]


def _train(
    ctx: Context,
    script: str,
    config: str,
    out: Path,
    model: Path,
    seed: int,
    data: list[dict],
    extra: list[str],
) -> Command:
    argv = (
        script, "--config", config, f"model={model}", f"out={out}", f"seed={seed}",
        f"data={json.dumps(data)}", *extra,
    )  # fmt: skip
    return Command(argv, out / "final" / "mmalign.json", ctx.ranks, out.with_suffix(".log"), out)


def run_dir(ctx: Context, name: str, regime: str, seed: int) -> Path:
    """The run folder of row (entry ``name``, ``regime``, ``seed``)."""
    return ctx.runs / f"{name}-{regime}-s{seed}"


def plan_control(ctx: Context, entry: MethodEntry, regime: str, seed: int) -> Plan:
    """SFT continued on the regime's annotations (noisy ``llava/train.json`` or ``train_clean.json``),
    ``entry.examples`` records, the control config (``configs/shapeworld/control.yaml``)."""
    out = run_dir(ctx, entry.name, regime, seed)
    data = [_source(annotations(ctx, regime), ctx.train, entry.examples)]
    cmd = _train(ctx, "train/sft.py", CONTROL_CONFIG, out, ctx.model, seed, data, _budget(entry, ctx.ranks))
    return Plan(entry.name, regime, seed, [cmd], out / "final")


def plan_lrv(ctx: Context, entry: MethodEntry, regime: str, seed: int) -> Plan:
    """LRV-Instruction (Liu et al., 2023): the regime's annotations plus ``options.share`` of the
    examples from ``data_builders/lrv.py`` (positives and negatives at ``options.ratio``), built from
    the dense captions the regime has (noisy: ``dense/train.jsonl``; clean: the scene graphs)."""
    share = float(entry.options.get("share", 0.5))
    per_image = int(entry.options.get("per_image", 6))
    n_lrv = round(entry.examples * share)
    # What the paper assumes: LRV builds from the dataset's dense captions. In the noisy regime these
    # are the training annotation's (dense/train.jsonl names the invented partners); in the clean
    # regime the exact scene graphs.
    built = ctx.work / f"lrv-{regime}"
    source = "dense/train.jsonl" if regime == "noisy" else "scenes/train.jsonl"
    build = Command(
        (
            "data_builders/lrv.py",
            str(ctx.train / source),
            "--out",
            str(built),
            "--world",
            str(ctx.train / "world.json"),
            "--media-root",
            str(ctx.train),
            "--per-image",
            str(per_image),
            "--ratio",
            str(entry.options.get("ratio", "1:1")),
            "--limit",
            str(math.ceil(1.2 * n_lrv / per_image) + 1),
            "--no-progress",
        ),  # fmt: skip
        built / "summary.json",
        log=ctx.work / f"lrv-{regime}.log",
    )
    out = run_dir(ctx, entry.name, regime, seed)
    data = [
        _source(annotations(ctx, regime), ctx.train, entry.examples - n_lrv),
        _source(built / "llava.jsonl", ctx.train, n_lrv),
    ]
    cmd = _train(ctx, "train/sft.py", CONTROL_CONFIG, out, ctx.model, seed, data, _budget(entry, ctx.ranks))
    return Plan(entry.name, regime, seed, [build, cmd], out / "final")


def plan_dpo(ctx: Context, entry: MethodEntry, regime: str, seed: int) -> Plan:
    """DPO + SFT term (``configs/dpo/tiny_shapeworld.yaml``) on ShapeWorld pairs
    (``mmalign.preference.shapeworld_pairs``, chosen text from the regime's annotation)."""
    annotation = "noisy" if regime == "noisy" else "exact"
    pairs = ctx.work / f"pairs-{regime}" / "train.jsonl"
    build = Command(
        ("-m", "mmalign.preference.shapeworld_pairs", "--data", str(ctx.train), "--split", "train",
         "--annotation", annotation, "--out", str(pairs)),
        pairs, log=ctx.work / f"pairs-{regime}.log",
    )  # fmt: skip
    out = run_dir(ctx, entry.name, regime, seed)
    data = [_source(pairs, ctx.train, entry.examples)]
    cmd = _train(ctx, "train/dpo.py", DPO_CONFIG, out, ctx.model, seed, data, _budget(entry, ctx.ranks))
    return Plan(entry.name, regime, seed, [build, cmd], out / "final")


def plan_povid(ctx: Context, entry: MethodEntry, regime: str, seed: int) -> Plan:
    """POVID (Zhou et al., 2024): stage 1 DPO on rule-injected hallucinations, stage 2 adds the
    distorted-image responses (``configs/dpo/tiny_shapeworld_povid.yaml``); preferred answers are the
    regime's annotations; ``options.stage1_share`` of the steps in stage 1.

    Raises:
        ValueError: a stage would get no steps.
    """
    s1 = round(entry.steps * float(entry.options.get("stage1_share", 0.5)))
    s2 = entry.steps - s1
    if s2 < 1:
        raise ValueError(f"method entry {entry.name!r}: stage 2 gets no steps (stage1_share too high)")
    built = ctx.work / f"povid-{regime}"
    build = Command(
        (
            "data_builders/povid.py",
            str(annotations(ctx, regime)),
            "--out",
            str(built),
            "--scenes",
            str(ctx.train / "scenes" / "train.jsonl"),
            "--world",
            str(ctx.train / "world.json"),
            "--media-root",
            str(ctx.train),
            "--distort",
            "disk",
            "--t",
            str(entry.options.get("t", 500)),
            "--noisy-dir",
            f"povid_noisy_{regime}",
            "--limit",
            str(math.ceil(1.5 * max(s1, s2) * entry.batch)),
            "--no-progress",
        ),  # fmt: skip
        built / "summary.json",
        log=ctx.work / f"povid-{regime}.log",
    )
    pairs = built / "povid.jsonl"
    run = run_dir(ctx, entry.name, regime, seed)
    stage1, stage2 = run / "stage1", run / "stage2"
    cmds = [build]
    if s1 > 0:
        data = [_source(pairs, ctx.train, s1 * entry.batch)]
        cmds.append(
            _train(
                ctx, "train/dpo.py", DPO_CONFIG, stage1, ctx.model, seed, data, _budget(entry, ctx.ranks, s1)
            )
        )
    start = stage1 / "final" if s1 > 0 else ctx.model
    data = [_source(pairs, ctx.train, s2 * entry.batch)]
    cmds.append(
        _train(ctx, "train/dpo.py", POVID_CONFIG, stage2, start, seed, data, _budget(entry, ctx.ranks, s2))
    )
    return Plan(entry.name, regime, seed, cmds, stage2 / "final")


def plan_align2llava(ctx: Context, entry: MethodEntry, regime: str, seed: int) -> Plan:
    """Align²LLaVA (Huang et al., 2024): two reward models (question and answer quality) on a small
    labelled subset, the regime's first ``options.corpus`` records scored and ``options.keep`` of
    them kept, then SFT on the kept set for the entry's steps.

    Raises:
        ValueError: inconsistent options (a corpus smaller than the kept set, …).
    """
    opts = entry.options
    subset = opts.get("subset", "curated")
    if subset not in ("curated", "full"):
        raise ValueError(
            f"method entry {entry.name!r}: options.subset must be curated or full, got {subset!r}"
        )
    corpus = int(opts.get("corpus", entry.examples))
    corpus_file = annotations(ctx, regime)
    out = run_dir(ctx, entry.name, regime, seed)
    extra = [*_budget(entry, ctx.ranks), *entry.overrides]
    if subset == "full":
        data = [_source(corpus_file, ctx.train, corpus)]
        return Plan(
            entry.name,
            regime,
            seed,
            [_train(ctx, "train/sft.py", CONTROL_CONFIG, out, ctx.model, seed, data, extra)],
            out / "final",
        )
    a2l = ctx.work / "a2l"
    rm = a2l / "rm"
    cmds = [
        Command(
            (
                "data_builders/align2llava.py",
                "pairs",
                "--data",
                str(ctx.train),
                "--out",
                str(rm),
                "--n",
                str(opts.get("rm_scenes", 400)),
                "--seed",
                "0",
            ),
            rm / "ga_pairs.jsonl",
            log=a2l / "pairs.log",
        )  # fmt: skip
    ]
    rm_steps = int(opts.get("rm_steps", 60))
    for which, pairs in (("question", "fq_pairs.jsonl"), ("answer", "ga_pairs.jsonl")):
        cmds.append(
            Command(
                (
                    "train/reward.py",
                    "--config",
                    REWARD_CONFIG,
                    f"model={ctx.model}",
                    f"out={rm / which}",
                    f"data={json.dumps([_source(rm / pairs, ctx.train)])}",
                    "reward_prompt=null",
                    f"max_steps={rm_steps}",
                    "save_every=0",
                    "eval_fraction=0.05",
                    f"optim.warmup_steps={max(1, min(10, rm_steps // 10))}",
                ),
                rm / which / "final" / "mmalign.json",
                ctx.ranks,
                a2l / f"rm-{which}.log",
            )  # fmt: skip
        )
    scores = a2l / f"score-{regime}"
    cmds.append(
        Command(
            (
                "data_builders/align2llava.py",
                "score",
                str(corpus_file),
                "--out",
                str(scores),
                "--limit",
                str(corpus),
                "--question-rm",
                str(rm / "question" / "final"),
                "--answer-rm",
                str(rm / "answer" / "final"),
                "--media-root",
                str(ctx.train),
                "--no-progress",
            ),
            scores / "summary.json",
            log=a2l / f"score-{regime}.log",
        )  # fmt: skip
    )
    selected = a2l / f"selected-{regime}.jsonl"
    cmds.append(
        Command(
            (
                "data_builders/align2llava.py",
                "select",
                str(corpus_file),
                "--scores",
                str(scores / "scores.jsonl"),
                "--out",
                str(selected),
                "--keep",
                str(opts.get("keep", 0.1)),
                "--question-keep",
                str(opts.get("question_keep", 0.3)),
            ),
            selected,
            log=a2l / f"select-{regime}.log",
        )  # fmt: skip
    )
    cmds.append(
        _train(
            ctx, "train/sft.py", CONTROL_CONFIG, out, ctx.model, seed, [_source(selected, ctx.train)], extra
        )
    )
    return Plan(entry.name, regime, seed, cmds, out / "final")


def rl_iterations(entry: MethodEntry, ranks: int) -> tuple[int, list[str]]:
    """Iterations of an ``rl`` entry whose ``steps`` and ``batch`` match its control, and its overrides.

    Raises:
        ValueError: ``steps`` is not a whole number of iterations, or ``batch`` is not PPO's step batch.
    """
    from mmalign.config import load_config
    from mmalign.rl.config import PPOConfig

    over = [f"preset={entry.options.get('preset', 'none')}", *entry.overrides]
    cfg = load_config(PPOConfig, PPO_CONFIG, over)
    try:
        updates = cfg.updates_per_iteration(ranks)
    except ValueError as exc:
        raise ValueError(f"method entry {entry.name!r}: {exc}") from exc
    responses = cfg.step_batch(ranks) * cfg.num_samples  # examples per optimizer step
    if responses != entry.batch or entry.steps % updates:
        raise ValueError(
            f"method entry {entry.name!r}: {entry.steps} steps × {entry.batch} examples is not a whole number of "
            f"RL iterations ({updates} optimizer steps of {responses} responses each); set overrides "
            "(rollout_batch_size, num_samples, strategy.micro_batch_size) or steps to match"
        )
    return entry.steps // updates, over


def plan_fact_rm(ctx: Context, entry: MethodEntry, prompts: Path) -> tuple[list[Command], Path]:
    """The commands that build a Fact-RM for ``entry`` once per study, and the folder PPO loads.

    LLaVA-RLHF's factually augmented reward model (Sun et al., 2023,
    https://arxiv.org/abs/2309.14525): human preferences between two answers of the SFT model, and
    a reward model shown the image's ground-truth captions. Here (``data_builders/shapeworld_rlhf.py``,
    README "The Fact-RLHF study on ShapeWorld"):

    1. ``shapeworld_rlhf.py prefs``: K = 2 sampled answers (temperature 1.0) of the SFT model
       (``ctx.model``) to each PPO prompt of ``prompts/ppo_prompts/{train,test}.jsonl`` (the
       study's training data, ``ctx.train``), the better and the worse by a simulated annotator
       who sees the scene graph → LLaVA-RLHF pair records in ``prompts/rlhf_prefs/train.jsonl``
       (ties dropped); done when ``rlhf_prefs/stats.json`` exists.
    2. ``train/reward.py`` (``configs/reward/tiny_shapeworld_rlhf_fact.yaml``; reward prompt
       ``options.reward_prompt``, default ``configs/prompts/fact_rlhf_reward.txt``: the exact
       caption) on those pairs, ``options.rm_steps`` optimizer steps of ``options.rm_batch`` pairs
       over ``ctx.ranks`` ranks, 5 % of the pairs held out (``eval/accuracy`` in its metrics), into
       ``ctx.work / "fact-rm"``.

    Both depend on neither the regime nor the seed (the annotator sees the scene; the captions are
    exact), so every seed's plan holds the same two commands (same ``done`` paths, same argv) and
    the runner runs them once, seed 0 (like Align²LLaVA's reward models). Their cost is not in a
    row's training cost (``Command.run`` unset, as for Align²LLaVA's shared reward models).

    Size (on 2 CPU cores; planned at ≤ 8 min for both, measured: the 40 RM steps took 333 s beside
    another 2-rank job, held-out pair accuracy 0.82): the prefs
    builder samples every PPO prompt (1,916 train + 288 test on the study's 8000-image data; the
    README's run took 27.5 s for the train split, ``rlhf_prefs/stats.json``; ~1 min with loading
    and the test split) — kept whole, since the reward model's cost is its steps × pairs per step
    whatever the pool, and the whole pool (~730 pairs) spares it repeats. The reward model is the
    cost: 7.5 s (the reward config's note) to 18 s (the README's run: 64 steps in 19.6 min, beside
    other jobs) per step of 32 pairs, the ~490-token reward prompt preceding each answer, plus ~30 s
    of launch. Default 40 steps of 16 pairs = 640 pairs (~0.9 epoch of the ~690 kept for
    training): ~2.5–6 min, so prefs + RM ≈ 3.5–7.5 min. The README's Fact-RM had 64 steps of 32 and
    its training loss had barely moved after 20 (warm-up 10), so this one is weaker; its held-out
    accuracy is logged in ``fact-rm/metrics.jsonl`` (``eval/accuracy``).

    Returns:
        The commands (prefs, reward training) and the reward model's ``final`` folder.

    Raises:
        ValueError: ``options.rm_steps`` < 1, or ``options.rm_batch`` not a positive multiple of
            ``ctx.ranks``.
    """
    steps = int(entry.options.get("rm_steps", 40))
    batch = int(entry.options.get("rm_batch", 16))
    if steps < 1 or batch < 1 or batch % ctx.ranks:
        raise ValueError(
            f"method entry {entry.name!r}: options.rm_steps must be ≥ 1 and options.rm_batch a positive "
            f"multiple of ranks {ctx.ranks}, got rm_steps {steps}, rm_batch {batch}"
        )
    prefs = Command(
        (
            "data_builders/shapeworld_rlhf.py", "prefs", "--data", str(ctx.train), "--out", str(prompts),
            "--prompts", str(prompts / "ppo_prompts"), "--model", str(ctx.model), "--k", "2", "--seed", "0",
        ),
        prompts / "rlhf_prefs" / "stats.json",
        log=ctx.work / "fact-rm-prefs.log",
    )  # fmt: skip
    out = ctx.work / "fact-rm"
    data = [{**_source(prompts / "rlhf_prefs" / "train.jsonl", ctx.train), "format": "llava_rlhf"}]
    rm = Command(
        (
            "train/reward.py", "--config", FACT_RM_CONFIG, f"model={ctx.model}", f"out={out}", "seed=0",
            f"data={json.dumps(data)}",
            f"reward_prompt={entry.options.get('reward_prompt', FACT_PROMPT)}",
            f"max_steps={steps}", f"strategy.micro_batch_size={batch // ctx.ranks}", "strategy.grad_accum=1",
            f"optim.warmup_steps={max(1, min(10, steps // 10))}", "eval_fraction=0.05", "save_every=0",
            f"log_every={max(1, min(10, steps // 5))}",
        ),
        out / "final" / "mmalign.json",
        ctx.ranks,
        out.with_suffix(".log"),
    )  # fmt: skip
    return [prefs, rm], out / "final"


def plan_rl(ctx: Context, entry: MethodEntry, regime: str, seed: int) -> Plan:
    """PPO / ReMax / RLOO / GRPO (``train/ppo.py``, ``options.preset``) from the SFT model, rewarded by
    the exact ShapeWorld judge or ``options.reward_model`` (a Fact-RM folder, or ``build``: the
    study builds one, :func:`plan_fact_rm`), iterations chosen so that the optimizer steps ×
    responses per step equal the entry's budget.

    With a reward model the reward prompt is ``options.reward_prompt`` (default
    ``configs/prompts/fact_rlhf_reward.txt``: the scene's exact caption, LLaVA-RLHF's factual
    augmentation, https://arxiv.org/abs/2309.14525).

    Raises:
        ValueError: the budget cannot be met by whole iterations; the noisy regime without a reward
            model; ``reward_model`` not a string; ``reward_model: build`` in the clean regime (the
            built Fact-RM does not depend on the regime, so that row would repeat the noisy one;
            the clean regime has the exact judge); bad ``rm_steps`` / ``rm_batch``.
    """
    rm = entry.options.get("reward_model")
    if rm is not None and not isinstance(rm, str):
        raise ValueError(
            f"method entry {entry.name!r}: options.reward_model must be a reward-model folder or "
            f"{BUILD!r}, got {rm!r}"
        )
    if regime == "noisy" and not rm:
        raise ValueError(
            f"method entry {entry.name!r}: the judge reward is exact (clean regime only); the noisy regime needs "
            f"options.reward_model (a Fact-RM folder, or {BUILD!r} to train one from the SFT model's judged "
            "samples as data_builders/shapeworld_rlhf.py describes)"
        )
    if rm == BUILD and regime != "noisy":
        raise ValueError(
            f"method entry {entry.name!r}: options.reward_model: {BUILD} is for the noisy regime only: the "
            "Fact-RM it builds does not depend on the regime (an annotator who sees the scene judges the SFT "
            "model's own samples; the reward prompt's captions are exact), so a clean row would repeat the "
            "noisy one; in the clean regime use the exact judge (no reward_model) in another entry"
        )
    iterations, over = rl_iterations(entry, ctx.ranks)
    prompts = ctx.work / "rlhf"
    build = Command(
        ("data_builders/shapeworld_rlhf.py", "prompts", "--data", str(ctx.train), "--out", str(prompts)),
        prompts / "ppo_prompts" / "train.jsonl",
        log=ctx.work / "rlhf-prompts.log",
    )
    cmds = [build]
    if rm == BUILD:
        fact, final = plan_fact_rm(ctx, entry, prompts)
        cmds += fact
        rm = str(final)
    reward = (
        [f"reward_model={rm}", f"reward_prompt={entry.options.get('reward_prompt', FACT_PROMPT)}"]
        if rm
        else ["reward_model=null", f"reward_functions={JUDGE}"]
    )
    out = run_dir(ctx, entry.name, regime, seed)
    argv = (
        "train/ppo.py", "--config", PPO_CONFIG, f"model={ctx.model}", f"out={out}", f"seed={seed}",
        f"prompts={prompts / 'ppo_prompts' / 'train.jsonl'}", f"media_root={ctx.train}",
        f"iterations={iterations}", "save_every=0", "log_every=1", *reward, *over,
    )  # fmt: skip
    cmds.append(Command(argv, out / "final" / "mmalign.json", ctx.ranks, out.with_suffix(".log"), out))
    return Plan(entry.name, regime, seed, cmds, out / "final")


PLANNERS = {
    "control": plan_control,
    "lrv": plan_lrv,
    "povid": plan_povid,
    "dpo": plan_dpo,
    "align2llava": plan_align2llava,
    "rl": plan_rl,
}


def plan(ctx: Context, entry: MethodEntry, regime: str, seed: int) -> Plan:
    """The commands of one trained row; the ``sft`` row has none (the SFT model itself)."""
    if entry.method == "sft":
        return Plan(entry.name, regime, seed, [], ctx.model)
    if entry.matched:  # i-SRT and its matched control (imported here: that module imports this one)
        from mmalign.eval.study import isrt

        planner = isrt.plan_isrt if entry.method == "isrt" else isrt.plan_matched_control
    else:
        planner = PLANNERS[entry.method]
    p = planner(ctx, entry, regime, seed)
    if entry.overrides and entry.method not in ("rl", "align2llava"):
        for i, c in enumerate(p.commands):
            if c.run is not None:
                p.commands[i] = Command((*c.argv, *entry.overrides), c.done, c.ranks, c.log, c.run)
    return p
