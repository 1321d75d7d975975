"""Typed config of the efficacy study (issue 18, part 2): data, regimes, seeds and method entries.

A study compares alignment methods against the baseline a user would otherwise run: SFT continued
on the same annotations with the same number of optimizer steps and examples (the *control*).
Every method entry names its control; :class:`StudyConfig` refuses an entry whose optimizer steps
or examples per step differ from its control's, and an unknown method name, naming the entry.
i-SRT's optimizer steps depend on how many pairs its own judge keeps, so its control is *matched*
after each run instead (``options.match``, :attr:`MethodEntry.matched`): both leave ``steps`` out.

The YAML file (``configs/study/shapeworld.yaml``) is loaded by :func:`load_study`; its ``quick``
section is applied on top by ``--quick`` (fewer seeds, steps and probes, a subset of rows).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmalign.config import ConfigError, from_dict

#: Method kinds the runner knows (``mmalign.eval.study.methods``); an entry's ``method`` must be one.
METHODS = ("sft", "control", "lrv", "povid", "dpo", "align2llava", "rl", "isrt")
#: ``noisy``: the training annotations the SFT model learned (``llava/train.json``, noise included);
#: ``clean``: exact annotations (``llava/train_clean.json``, exact-scene-graph builders).
REGIMES = ("noisy", "clean")
#: Wordings of the held-out questions (``mmalign.eval.bars.measure_wordings``).
WORDINGS = ("natural", "terse")
#: ``options`` of an ``isrt`` entry and their defaults (``mmalign.eval.study.isrt``): iterations,
#: prompts drawn per iteration, steps of the format continuation (the start model), the judge
#: (``self``: i-SRT; ``oracle``: the exact ShapeWorld judge, an upper bound that reads the truth, not
#: i-SRT; ``llm``: an endpoint) and the context mode.
ISRT_OPTIONS: dict[str, Any] = {
    "iterations": 3, "per_iteration": 64, "format_steps": 300, "judge": "self", "context": "retrospective",
}  # fmt: skip
#: What an ``isrt`` entry's overrides may not set: the study sets them from ``options``.
ISRT_FIXED = (
    "iterations",
    "judge",
    "context",
    "pool.path",
    "pool.shapeworld",
    "pool.media_root",
    "pool.per_iteration",
)


@dataclass
class DataSpec:
    """One ShapeWorld dataset generated for the study (``python -m mmalign.shapeworld generate``).

    Attributes:
        n_images: image scenes (all splits).
        n_videos: video clips (all splits).
        seed: the generator's seed (the training data uses the SFT model's seed 0; the held-out
            evaluation data its own seed, so no evaluated scene was ever trained on).
        val_frac: share of scenes in the validation split.
        test_frac: share of scenes in the test split (the held-out split read by the judges).
        prior_per_group: prior probes (violating / control scenes) per group.
    """

    n_images: int = 8000
    n_videos: int = 200
    seed: int = 0
    val_frac: float = 0.1
    test_frac: float = 0.1
    prior_per_group: int = 100

    def __post_init__(self) -> None:
        if self.n_images < 10:
            raise ValueError(f"n_images must be ≥ 10, got {self.n_images}")


@dataclass
class Limits:
    """How much of the held-out split each model is judged on.

    Attributes:
        n_images, n_videos, n_prior, batch_size: ``mmalign.eval.bars.BarLimits``.
        n_mmhal: MMHal-style records rated exactly (``mmalign.eval.mmhal.shapeworld_records``); 0: none.
    """

    n_images: int = 200
    n_videos: int = 100
    n_prior: int = 100
    batch_size: int = 32
    n_mmhal: int = 48


@dataclass
class MethodEntry:
    """One row of the study: a method, the regimes it runs in, its budget and its control.

    Attributes:
        name: the row's label (unique).
        method: one of :data:`METHODS`.
        regimes: regimes it runs in (subset of :data:`REGIMES`); ``sft`` is measured once.
        steps: optimizer steps (all stages together; RL: iterations × updates per iteration); 0
            for a :attr:`matched` entry (known after the run).
        batch: examples per optimizer step over all ranks (micro-batch × ranks; no accumulation).
        control: the name of the ``control`` entry it is judged against (same steps and batch; an
            ``isrt`` entry's control has ``options.match`` naming it).
        options: method-specific knobs (see ``mmalign.eval.study.methods``).
        overrides: extra ``key=value`` overrides passed to the training script(s).
        seeded: False for a row that has no training (the SFT model): measured once.
    """

    name: str
    method: str
    regimes: list[str] = field(default_factory=lambda: list(REGIMES))
    steps: int = 0
    batch: int = 32
    control: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"method entry {self.name!r}: unknown method {self.method!r}; known: {', '.join(METHODS)}"
            )
        bad = [r for r in self.regimes if r not in REGIMES]
        if bad:
            raise ValueError(
                f"method entry {self.name!r}: unknown regime(s) {bad}; known: {', '.join(REGIMES)}"
            )
        if self.matched and self.steps:
            raise ValueError(
                f"method entry {self.name!r}: leave steps out: i-SRT's optimizer steps depend on the pairs "
                "its judge keeps, and its control (options.match) gets the steps each run took"
            )
        if self.method != "sft" and ((self.steps < 1 and not self.matched) or self.batch < 1):
            raise ValueError(f"method entry {self.name!r}: steps and batch must be ≥ 1")
        # the budget is steps × batch; an override must not change it behind the check
        fixed = ("data", "seed", "model", "out") + (
            () if self.method == "rl" else ("max_steps", "strategy.micro_batch_size", "strategy.grad_accum")
        )
        fixed += ISRT_FIXED if self.method == "isrt" else ()
        for item in self.overrides:
            if item.split("=", 1)[0].strip() in fixed:
                raise ValueError(
                    f"method entry {self.name!r}: override {item!r} changes what the study sets "
                    f"({', '.join(fixed)}); use steps / batch / options instead"
                )
        for key, low, high in (("share", 0.0, 1.0), ("stage1_share", 0.0, 1.0), ("keep", 0.0, 1.0)):
            if key in self.options and not low <= float(self.options[key]) <= high:
                raise ValueError(f"method entry {self.name!r}: options.{key} must be in [{low}, {high}]")
        if "per_image" in self.options and int(self.options["per_image"]) < 1:
            raise ValueError(f"method entry {self.name!r}: options.per_image must be ≥ 1")
        if self.matched:
            check_isrt_entry(self)

    @property
    def matched(self) -> bool:
        """Whether the budget is set after the run: an ``isrt`` entry, or the control that names
        one in ``options.match`` (SFT on the run's pairs' prompts at DPO's optimizer steps)."""
        return self.method == "isrt" or (self.method == "control" and "match" in self.options)

    @property
    def seeded(self) -> bool:
        """Whether the row trains (and so runs once per seed); the SFT model is measured once."""
        return self.method != "sft"

    @property
    def examples(self) -> int:
        """Examples seen in training (steps × batch)."""
        return self.steps * self.batch


def check_isrt_entry(entry: MethodEntry) -> None:
    """Refuse an ``isrt`` entry or matched control with a regime other than noisy, an unknown or bad
    option (:data:`ISRT_OPTIONS`; a matched control takes only ``match``).

    Raises:
        ValueError: naming the entry and the option.
    """
    if entry.regimes != ["noisy"]:
        raise ValueError(
            f"method entry {entry.name!r}: set regimes: [noisy]: i-SRT reads no annotation (a clean row would "
            "repeat the noisy run) and its start model and matched control learn from the training annotations"
        )
    known = ISRT_OPTIONS if entry.method == "isrt" else {"match": None}
    unknown = sorted(set(entry.options) - set(known))
    if unknown:
        raise ValueError(
            f"method entry {entry.name!r}: unknown option(s) {unknown}; known: {', '.join(known)}"
        )
    if entry.method != "isrt":
        return
    o = {**ISRT_OPTIONS, **entry.options}
    for key in ("iterations", "per_iteration", "format_steps"):
        if not isinstance(o[key], int) or o[key] < 1:
            raise ValueError(
                f"method entry {entry.name!r}: options.{key} must be an integer ≥ 1, got {o[key]!r}"
            )
    for key, allowed in (
        ("judge", ("self", "oracle", "llm")),
        ("context", ("retrospective", "fresh", "none")),
    ):
        if o[key] not in allowed:
            raise ValueError(
                f"method entry {entry.name!r}: options.{key} must be one of {allowed}, got {o[key]!r}"
            )


@dataclass
class QuickSpec:
    """What ``--quick`` changes (a small version of the same study).

    Attributes:
        seeds: seeds of every trained row.
        steps: optimizer steps of every trained row (methods and controls alike, so budgets
            still match); 0 keeps the entries' steps.
        methods: the entries kept, by name (empty: all).
        regimes: per entry name, the regimes it keeps (an entry not named keeps all of its own).
        train_dir: the training dataset's folder (see :attr:`StudyConfig.train_dir`).
        train: the training dataset's size.
        eval: the held-out dataset's size.
        limits: the judges' limits.
    """

    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int = 0
    methods: list[str] = field(default_factory=list)
    regimes: dict[str, list[str]] = field(default_factory=dict)
    train_dir: str | None = None
    train: DataSpec | None = None
    eval: DataSpec | None = None
    limits: Limits | None = None


@dataclass
class StudyConfig:
    """The whole study.

    Attributes:
        model: the SFT model every run starts from (an mmalign checkpoint directory).
        out: output folder (``report.md``, ``results.json``, charts; runs under ``runs/``).
        world: the ShapeWorld world config (JSON) both datasets are generated with.
        train: the training dataset (seed 0: what the SFT model learned from).
        train_dir: where the training dataset is: an existing ``generate`` folder used as it is
            (e.g. the quickstart's ``runs/shapeworld``, the same data as :attr:`train`), or
            generated there from :attr:`train` when missing; None: ``<out>/data/train``.
        eval: the held-out dataset (its own seed).
        limits: the judges' limits on the held-out split.
        seeds: seeds of every trained row (≥ 3 for a claim; mean ± std over them).
        ranks: DeepSpeed ranks per training run.
        wordings: the held-out questions' wordings (``bars.measure_wordings``, captions generated
            once); the first is the one the report's tables, charts and targets use (``natural``:
            what users and POPE ask), ``results.json`` keeps every one.
        methods: the rows.
        quick: what ``--quick`` changes.
    """

    model: str = "checkpoints/tiny-shapeworld"
    out: str = "runs/study"
    world: str = "configs/shapeworld/world.json"
    train: DataSpec = field(default_factory=DataSpec)
    eval: DataSpec = field(
        default_factory=lambda: DataSpec(n_images=400, n_videos=60, seed=1234, val_frac=0.0, test_frac=0.8)
    )
    limits: Limits = field(default_factory=Limits)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    ranks: int = 2
    wordings: list[str] = field(default_factory=lambda: list(WORDINGS))
    train_dir: str | None = None
    methods: list[MethodEntry] = field(default_factory=list)
    quick: QuickSpec = field(default_factory=QuickSpec)

    def __post_init__(self) -> None:
        names = [m.name for m in self.methods]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"method entries named twice: {', '.join(dup)}")
        if not self.seeds:
            raise ValueError("seeds: at least one")
        bad = [w for w in self.wordings if w not in WORDINGS]
        if bad or not self.wordings or len(set(self.wordings)) < len(self.wordings):
            raise ValueError(f"wordings: distinct entries of {', '.join(WORDINGS)}, got {self.wordings}")
        by_name = {m.name: m for m in self.methods}
        for i, m in enumerate(self.methods):
            if self.ranks < 1:
                raise ValueError(f"ranks must be ≥ 1, got {self.ranks}")
            if m.batch % self.ranks:
                raise ValueError(
                    f"method entry {m.name!r}: batch {m.batch} is not a multiple of ranks {self.ranks}"
                )
            if m.method == "control" and m.matched:
                check_matched(m, by_name, names[:i])
            if m.method in ("sft", "control"):
                continue
            check_budget(m, by_name)

    def entry(self, name: str) -> MethodEntry:
        """The entry called ``name`` (StopIteration when there is none; names are checked at load)."""
        return next(m for m in self.methods if m.name == name)


def check_budget(method: MethodEntry, by_name: dict[str, MethodEntry]) -> None:
    """Refuse a method whose control is missing, not a control, or of another budget.

    Raises:
        ValueError: naming the entry, its control and both budgets.
    """
    if method.control is None:
        raise ValueError(
            f"method entry {method.name!r}: needs `control:` (a control entry of the same budget)"
        )
    control = by_name.get(method.control)
    if control is None:
        raise ValueError(f"method entry {method.name!r}: control {method.control!r} is not an entry")
    if control.method != "control":
        raise ValueError(
            f"method entry {method.name!r}: control {method.control!r} is a {control.method!r} entry, not a control"
        )
    if method.matched != control.matched or (control.matched and control.options["match"] != method.name):
        raise ValueError(
            f"method entry {method.name!r}: "
            + (f"an i-SRT entry's control must be matched to it (options: {{match: {method.name}}})"
               if method.matched else f"control {control.name!r} is matched to another entry (options.match)")
        )  # fmt: skip
    if (method.steps, method.batch) != (control.steps, control.batch):
        raise ValueError(
            f"method entry {method.name!r}: budget mismatch with its control {control.name!r}: "
            f"{method.steps} steps × {method.batch} examples vs {control.steps} × {control.batch}"
        )
    missing = [r for r in method.regimes if r not in control.regimes]
    if missing:
        raise ValueError(
            f"method entry {method.name!r}: its control {control.name!r} does not run in {missing}"
        )


def check_matched(control: MethodEntry, by_name: dict[str, MethodEntry], before: list[str]) -> None:
    """Refuse a matched control (``options.match``) that names no ``isrt`` entry, or comes before it
    (it is built from that entry's finished runs, and the runner runs the rows in config order).

    Raises:
        ValueError: naming the control and the entry it names.
    """
    target = by_name.get(control.options["match"])
    if target is None or target.method != "isrt":
        raise ValueError(
            f"method entry {control.name!r}: options.match must name an isrt entry, got {control.options['match']!r}"
        )
    if target.name not in before:
        raise ValueError(
            f"method entry {control.name!r}: list it after {target.name!r}: it is built from that entry's finished runs"
        )
    if target.control != control.name:
        raise ValueError(
            f"method entry {control.name!r}: matched to {target.name!r}, whose control is {target.control!r}"
        )


def apply_quick(cfg: StudyConfig) -> StudyConfig:
    """The ``--quick`` version of ``cfg``: its ``quick`` section applied (budgets re-checked)."""
    q = cfg.quick
    keep = set(q.methods) if q.methods else {m.name for m in cfg.methods}
    unknown = (keep | set(q.regimes)) - {m.name for m in cfg.methods}
    if unknown:
        raise ConfigError(f"quick.methods / quick.regimes: unknown entries {sorted(unknown)}")
    lost = [m.name for m in cfg.methods if m.name in keep and m.matched and m.method == "control"
            and m.options["match"] not in keep]  # fmt: skip
    if lost:
        raise ConfigError(
            f"quick.methods keeps the matched control(s) {lost} but not the i-SRT entry they are matched to"
        )
    try:  # entries, budgets and regimes re-checked
        methods = []
        for m in cfg.methods:
            if m.name not in keep:
                continue
            steps = q.steps if (q.steps and m.method != "sft" and not m.matched) else m.steps
            regimes = [r for r in m.regimes if r in q.regimes.get(m.name, m.regimes)]
            methods.append(dataclasses.replace(m, steps=steps, regimes=regimes))
        return dataclasses.replace(
            cfg,
            seeds=list(q.seeds),
            methods=methods,
            train_dir=q.train_dir or cfg.train_dir,
            train=q.train or cfg.train,
            eval=q.eval or cfg.eval,
            limits=q.limits or cfg.limits,
        )
    except ValueError as exc:
        raise ConfigError(f"quick: {exc}") from exc


def study_from_dict(data: dict[str, Any]) -> StudyConfig:
    """A :class:`StudyConfig` from a mapping (``ConfigError`` names a bad key or entry)."""
    return from_dict(StudyConfig, data)


def load_study(
    path: str | Path, quick: bool = False, out: str | None = None, train_dir: str | None = None
) -> StudyConfig:
    """Load the study config from YAML; ``quick`` applies its ``quick`` section; ``out`` and
    ``train_dir`` override the config's."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"study config not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    cfg = study_from_dict(data)
    if quick:
        cfg = apply_quick(cfg)
    if out:
        cfg = dataclasses.replace(cfg, out=out)
    if train_dir:
        cfg = dataclasses.replace(cfg, train_dir=train_dir)
    return cfg
