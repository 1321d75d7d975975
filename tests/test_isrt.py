"""i-SRT stages in one process (ZeRO-0, no process group): frames, judge prompts, ties and order
swapping, reference log-probs, the resumable store. The DeepSpeed runs (2 ZeRO-3 ranks, kill -9 and
resume) are in ``tests/test_isrt_multiproc.py``."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mmalign.isrt.config import ISRTConfig, PoolConfig
from mmalign.isrt.judges import LETTERS, SelfJudge, decide
from mmalign.isrt.loop import pair_groups, policy_path
from mmalign.isrt.policy import FrozenPolicy
from mmalign.isrt.prompts import ClipCache, frames_digest, judge_text, load_pool
from mmalign.isrt.stages import context_stage, judge_stage, pair_stage, sample_stage
from mmalign.isrt.store import StageStore
from mmalign.models.checkpoint import load_model, save_lmm
from mmalign.preference.batch import collate_shared, group_from_ids
from mmalign.preference.scoring import PreferenceModel
from mmalign.training.ds_config import StrategyConfig
from mmalign.training.strategy import Strategy

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "checkpoints" / "tiny-shapeworld"
WORLD = ROOT / "configs" / "shapeworld" / "world.json"


def make_pool(root: Path, per_set: int = 3) -> Path:
    """ShapeWorld video QA from two worlds whose clips differ in length (8 and 16 frames)."""
    from mmalign.shapeworld import WorldConfig, generate

    base = json.loads(WORLD.read_text())
    records = []
    for tag, frames in (("a", 8), ("b", 16)):
        cfg = WorldConfig.from_dict({**base, "video_frames": frames})
        generate(root / tag, 0, 6, seed=11, cfg=cfg, prior_per_group=0, progress=False)
        seen: set[str] = set()
        for k, line in enumerate((root / tag / "qa" / "train.jsonl").read_text().splitlines()):
            q = json.loads(line)
            if q["scene_id"] in seen or len(seen) >= per_set:
                continue
            seen.add(q["scene_id"])
            records.append(
                {"id": f"{tag}{k}", "video": f"{tag}/{q['video']}", "question": q["question"], "truth": q}
            )
    path = root / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory) -> Path:
    return make_pool(tmp_path_factory.mktemp("isrt_pool"))


def make_cfg(pool: Path, out: Path, **over) -> ISRTConfig:
    fields = dict(
        model=str(SHIPPED), out=str(out), pool=PoolConfig(path=str(pool)), temperature=2.0,
        max_new_tokens=8, context_max_new_tokens=16, strategy=StrategyConfig(zero_stage=0, micro_batch_size=2),
    )  # fmt: skip
    return ISRTConfig(**{**fields, **over})


class PreferFirst:
    """A judge that always prefers sample 0 (margin 1): decided pairs, whatever the model."""

    def judge(self, rec, answers, context, real=True):
        return decide([{"i": 0, "j": 1, "prefs": [1.0, 1.0], "margin": 1.0}], 0.1, "first")


def run_stages(cfg: ISRTConfig, t: int, judge=None) -> tuple[FrozenPolicy, Path]:
    strategy = Strategy(cfg.strategy, seed=cfg.seed)  # ZeRO-0: no process group is needed
    directory = Path(cfg.out) / f"iter_{t}"
    records = load_pool(cfg.pool)
    policy = FrozenPolicy.load(strategy, policy_path(cfg, t), f"pi_{t}")
    sample_stage(policy, cfg, records, directory, t)
    context_stage(policy, cfg, records, directory, t, [Path(cfg.out) / f"iter_{k}" for k in range(t)])
    judge_stage(judge or SelfJudge(policy, cfg), strategy, cfg, records, directory, t)
    reference = None
    if cfg.reference_model == "start" and t:
        reference = FrozenPolicy.load(strategy, cfg.model, "start")
    pair_stage(reference, strategy, cfg, records, directory, t)
    return policy, directory


def test_same_frames_in_sampling_context_judging_reference_and_training(pool_file, tmp_path, monkeypatch):
    import mmalign.data.media as media
    import mmalign.isrt.policy as policy_mod

    calls: list[tuple[int, list[int]]] = []
    original = media.sample_frame_indices

    def spy(n_frames, num, **kw):
        out = original(n_frames, num, **kw)
        calls.append((n_frames, out))
        return out

    monkeypatch.setattr(media, "sample_frame_indices", spy)
    seen: dict[str, set[str]] = {}  # record id -> digests of the pixels every forward saw
    real_generate, real_collate = policy_mod.generate, policy_mod.collate_groups

    def gen_spy(model, processor, feats, *a, **kw):
        for f in feats:
            seen.setdefault(f["id"], set()).add(frames_digest(f["videos"]))
        return real_generate(model, processor, feats, *a, **kw)

    def collate_spy(groups, pad):
        for g in groups:
            seen.setdefault(g.id, set()).add(frames_digest(g.videos))
        return real_collate(groups, pad)

    monkeypatch.setattr(policy_mod, "generate", gen_spy)
    monkeypatch.setattr(policy_mod, "collate_groups", collate_spy)
    cfg = make_cfg(pool_file, tmp_path / "run")

    class SelfThenFirst:  # the self-judge's forwards run (and are checked); every record then decided
        def judge(self, rec, answers, context, real=True):
            SelfJudge(held[0], cfg).judge(rec, answers, context, real)
            return PreferFirst().judge(rec, answers, context, real)

    held: list[FrozenPolicy] = []
    real_load = FrozenPolicy.load
    monkeypatch.setattr(
        FrozenPolicy, "load", classmethod(lambda cls, *a, **k: held.append(real_load(*a, **k)) or held[-1])
    )
    policy, directory = run_stages(cfg, 0, SelfThenFirst())
    sampling_calls = list(calls)
    records = {r.id: r for r in load_pool(cfg.pool)}
    assert {n for n, _ in sampling_calls} == {8, 16}  # both clip lengths, 8 frames taken from each
    assert all(len(idx) == 8 for _, idx in sampling_calls)

    samples = StageStore(directory, "samples").read()
    contexts = StageStore(directory, "contexts").read()
    pairs = StageStore(directory, "pairs").read()
    by_video: dict[str, set[str]] = {}
    for rid, digests in seen.items():  # sampling, context, judging and reference forwards
        key = records[rid].video_key if rid in records else rid
        by_video.setdefault(key, set()).update(digests)
    for rec in samples.values():
        by_video[rec["video"]].add(rec["frames"])
        by_video[rec["video"]].add(contexts[rec["video"]]["frames"])
    # training: DPO's groups, built with a fresh clip cache (frames decoded again)
    calls.clear()
    pairs = list(pairs.values())
    assert pairs
    fresh = ClipCache(policy.processor)
    for p, g in zip(
        pairs, pair_groups(pairs, fresh, {r.video_key: r.video for r in records.values()}), strict=True
    ):
        by_video[p["video"]].update({frames_digest(g.videos), p["frames"]})
    assert all(len(d) == 1 for d in by_video.values()), by_video
    first = {n: idx for n, idx in sampling_calls}
    assert all(first[n] == idx for n, idx in calls)  # the same indices chosen again


def test_judge_prompt_with_and_without_context(pool_file, tmp_path):
    cfg = make_cfg(pool_file, tmp_path / "run")
    with_ctx = judge_text(cfg, "Motion of the circle", "left", "right", "A red circle moves left.")
    without = judge_text(cfg, "Motion of the circle", "left", "right", None)
    assert "Description of the video: A red circle moves left." in with_ctx
    assert "Description" not in without and "A red circle" not in without
    for text in (with_ctx, without):
        assert "Question: Motion of the circle" in text and "Answer A: left\nAnswer B: right" in text
    strategy = Strategy(cfg.strategy)
    policy = FrozenPolicy.load(strategy, str(SHIPPED), "pi")
    rec = load_pool(cfg.pool)[0]
    tok = policy.processor.tokenizer
    for ctx in ("A red circle moves left.", None):
        first, second = SelfJudge(policy, cfg).order_groups(rec, "left", "right", ctx)
        a, b = (tok.decode(g.prompt_ids) for g in (first, second))
        assert "Answer A: left\nAnswer B: right" in a and "Answer A: right\nAnswer B: left" in b  # swapped
        assert ("A red circle" in a) == (ctx is not None)
        assert [tok.decode(r, skip_special_tokens=True).strip() for r in first.responses] == list(LETTERS)


class LetterPolicy:
    """Letter log-probs from a rule on the judge prompt, to drive :class:`SelfJudge`."""

    def __init__(self, real: FrozenPolicy, rule) -> None:
        self.processor, self.clips, self.rule = real.processor, real.clips, rule

    def score(self, groups):
        tok = self.processor.tokenizer
        sums = torch.tensor([self.rule(tok.decode(g.prompt_ids)) for g in groups], dtype=torch.float32)
        return sums, None


def test_ties_dropped_and_orders_swapped(pool_file, tmp_path):
    cfg = make_cfg(pool_file, tmp_path / "run", tie_threshold=0.5)
    real = FrozenPolicy.load(Strategy(cfg.strategy), str(SHIPPED), "pi")
    rec = load_pool(cfg.pool)[0]

    def judge(rule):
        return SelfJudge(LetterPolicy(real, rule), cfg).judge(rec, ["good", "bad"], None)

    # content-driven: "good" wins in either position → decided, sample 0 chosen
    by_content = judge(lambda p: [2.0, 0.0] if "A: good" in p else [0.0, 2.0])
    assert (by_content["chosen"], by_content["rejected"], by_content["tie"]) == (0, 1, False)
    assert by_content["comparisons"][0]["prefs"] == [2.0, 2.0] and by_content["margin"] == 2.0
    # position bias: always "A" → the orders disagree → a tie
    biased = judge(lambda p: [1.0, 0.0])
    assert biased["tie"] and biased["reason"] == "order_disagree" and biased["chosen"] is None
    # agreeing but weak (margin 0.2 < 0.5) → a tie
    weak = judge(lambda p: [0.2, 0.0] if "A: good" in p else [0.0, 0.2])
    assert weak["tie"] and weak["reason"] == "below_threshold"
    # mean over orders: +3 and +1 → margin 2, decided
    mixed = judge(lambda p: [3.0, 0.0] if "A: good" in p else [0.0, 1.0])
    assert not mixed["tie"] and mixed["margin"] == pytest.approx(2.0)
    # K = 3: the decided pair of largest |margin| wins
    verdict = decide(
        [{"i": 0, "j": 1, "prefs": [1, -1], "margin": 0}, {"i": 0, "j": 2, "prefs": [-1.0, -3.0], "margin": -2.0},
         {"i": 1, "j": 2, "prefs": [0.6, 0.6], "margin": 0.6}], 0.5, "self",
    )  # fmt: skip
    assert (verdict["chosen"], verdict["rejected"], verdict["margin"]) == (2, 0, 2.0)


def test_ties_are_not_paired(pool_file, tmp_path):
    cfg = make_cfg(pool_file, tmp_path / "run", judge="oracle")
    _, directory = run_stages(cfg, 0, judge=None)
    judged = StageStore(directory, "judgements").read()
    pairs = StageStore(directory, "pairs").read()
    assert set(pairs) == {k for k, v in judged.items() if not v["tie"]}
    stats = StageStore(directory, "judgements").stats()
    assert stats["ties"] == sum(v["tie"] for v in judged.values())
    for p in pairs.values():
        assert {
            "id",
            "video",
            "prompt",
            "chosen",
            "rejected",
            "iteration",
            "judge_margin",
            "context",
            "lengths",
        } <= set(p)


def _score(path: str, pair: dict, clips_from: FrozenPolicy) -> list[float]:
    lmm, _ = load_model(path, dtype=torch.float32)
    group = group_from_ids(pair["id"], pair["prompt_ids"], [pair["chosen_ids"], pair["rejected_ids"]], None,
                           clips_from.clips(Path(clips_from.video_of[pair["video"]]), pair["id"]))  # fmt: skip
    batch = collate_shared([group], clips_from.processor.pad_token_id)
    with torch.no_grad():
        return PreferenceModel(lmm.eval(), "none")(batch, False)["policy"][0].tolist()


@pytest.mark.parametrize("reference", ["previous", "start"])
def test_reference_logprobs_are_the_previous_iterates(pool_file, tmp_path, reference):
    cfg = make_cfg(pool_file, tmp_path / "run", reference_model=reference, context="none")
    run_stages(cfg, 0, PreferFirst())
    # stand in for iteration 0's DPO: π_1 = π_0 with its LM head perturbed
    lmm, tok = load_model(str(SHIPPED), dtype=torch.float32)
    with torch.no_grad():
        torch.manual_seed(0)
        lmm.llm.lm_head.weight.add_(0.05 * torch.randn_like(lmm.llm.lm_head.weight))
    pi_1 = save_lmm(lmm, tok, tmp_path / "run" / "iter_0" / "dpo" / "final")
    (tmp_path / "run" / "iter_0" / "dpo.done").write_text(json.dumps({"model": str(pi_1)}))
    policy, directory = run_stages(cfg, 1, PreferFirst())
    policy.video_of = {r.video_key: r.video for r in load_pool(cfg.pool)}
    pairs = list(StageStore(directory, "pairs").read().values())
    assert pairs
    expect_model = str(pi_1) if reference == "previous" else str(SHIPPED)
    other = str(SHIPPED) if reference == "previous" else str(pi_1)
    for p in pairs:
        assert p["reference"] == reference
        assert p["ref_logps"] == pytest.approx(_score(expect_model, p, policy), abs=1e-4)
        assert p["ref_logps"] != pytest.approx(_score(other, p, policy), abs=1e-3)


def test_retrospective_context_revises_the_videos_latest_context(pool_file, tmp_path):
    """A video not drawn at t − 1 (``pool.per_iteration``) revises the context of the last
    iteration that drew it, not a fresh description."""
    cfg = make_cfg(pool_file, tmp_path / "run", context="retrospective")
    records = load_pool(cfg.pool)
    a, b = records[0], next(r for r in records if r.video_key != records[0].video_key)
    for t, rec, text in ((0, a, "a red square moves left"), (1, b, "a blue circle")):
        store = StageStore(Path(cfg.out) / f"iter_{t}", "contexts")
        store.open()
        store.append([{"id": rec.video_key, "context": text, "source": "describe", "iteration": t}])
    policy = FrozenPolicy.load(Strategy(cfg.strategy, seed=cfg.seed), str(SHIPPED), "pi_2")
    directory = Path(cfg.out) / "iter_2"
    context_stage(policy, cfg, [a], directory, 2, [Path(cfg.out) / f"iter_{k}" for k in range(2)])
    row = StageStore(directory, "contexts").read()[a.video_key]
    assert (row["source"], row["previous"]) == ("revise", "a red square moves left")


def test_eval_records_without_truth_need_an_answer(pool_file, tmp_path):
    """An evaluation record the LLM judge scores (no ShapeWorld truth) without its reference
    answer is refused, naming file:line and id — not judged against an empty answer."""
    from mmalign.data.formats import RecordError
    from mmalign.isrt.config import EvalConfig
    from mmalign.isrt.prompts import load_eval

    rec = json.loads(pool_file.read_text().splitlines()[0])
    rows = [{**rec, "id": "with", "truth": None, "answer": "red"}, {**rec, "id": "without", "truth": None}]
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = EvalConfig(path=str(path), media_root=str(pool_file.parent))
    with pytest.raises(RecordError, match=r"eval.jsonl:2 \(id without\).*answer"):
        load_eval(cfg)
    truth_only = {**rec, "id": "truth"}  # a ShapeWorld record in a file: its truth is the reference
    path.write_text(json.dumps(truth_only) + "\n")
    assert [(r.id, r.truth is not None) for r in load_eval(cfg)] == [("truth", True)]
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[1], "answer": " "}) + "\n")
    with pytest.raises(RecordError, match=r"eval.jsonl:2 \(id without\).*answer"):
        load_eval(cfg)
    # Video-ChatGPT's field names (as the 7B config's MSVD-QA file has them), a bare video name
    vcg = {"video_name": Path(rec["video"]).stem, "question_id": 7, "question": "q?", "answer": "a"}
    assert Path(rec["video"]).suffix == ".mp4"  # ShapeWorld writes mp4 clips
    path.write_text(json.dumps(vcg) + "\n")
    (got,) = load_eval(
        EvalConfig(path=str(path), media_root=str(pool_file.parent / Path(rec["video"]).parent))
    )
    assert (got.id, got.question, got.meta["answer"], got.video.suffix) == ("7", "q?", "a", ".mp4")
    path.write_text(json.dumps(rows[0]) + "\n")
    assert [r.meta["answer"] for r in load_eval(cfg)] == ["red"]
    path.write_text(json.dumps(rows[1]) + "\n")  # the pool needs no answer
    assert [r.id for r in load_pool(PoolConfig(path=str(path), media_root=str(pool_file.parent)))] == [
        "without"
    ]


def test_eval_waits_for_rank_0_without_a_collective(pool_file, tmp_path, monkeypatch):
    """A rank that does not evaluate waits for rank 0's eval.json outside any collective (a
    barrier would time out during a long evaluation) and returns rank 0's numbers."""
    import threading

    import mmalign.isrt.loop as loop

    monkeypatch.setattr(loop, "EVAL_POLL_S", 0.01, raising=False)
    cfg = make_cfg(pool_file, tmp_path / "run")
    directory = tmp_path / "run" / "iter_0"
    directory.mkdir(parents=True)
    out = directory / "eval.json"
    calls: list[bool] = []

    class Rank1:
        is_main = False

        def barrier(self):
            calls.append(out.exists())  # only once rank 0 has written

    result = {"accuracy": 0.5, "score": 2.5, "n": 2, "per_type": {"color": 0.5}}
    writer = threading.Timer(0.2, lambda: out.write_text(json.dumps(result)))
    writer.start()
    got = loop.eval_stage(cfg, directory, str(SHIPPED), load_pool(cfg.pool)[:2], Rank1())
    writer.join()
    assert calls == [True] and got["eval/accuracy"] == 0.5 and got["eval/color"] == 0.5


def test_store_cuts_a_torn_line_and_skips_written_ids(tmp_path):
    class One:
        rank, world_size, is_main = 0, 1, True

        def barrier(self):
            pass

        def all_reduce_max(self, v):
            return v

    store = StageStore(tmp_path, "samples")
    store.open()
    store.append([{"id": "a", "v": 1}])
    with store.shard.open("a") as f:
        f.write('{"id": "b", "v"')  # killed mid-write
    from mmalign.isrt.stages import _run

    done: list[str] = []
    _run(One(), store, ["a", "b", "c"], lambda i: done.append(i) or ({"id": i, "v": 2} if i else None))
    lines = store.shard.read_text().splitlines()
    assert done == ["b", "c"] and len(lines) == 3
    assert [json.loads(x)["id"] for x in lines] == ["a", "b", "c"]


def test_config_rejects_what_the_loop_cannot_do(pool_file, tmp_path):
    with pytest.raises(ValueError, match="num_samples"):
        make_cfg(pool_file, tmp_path, num_samples=1)
    with pytest.raises(ValueError, match="precomputed"):
        make_cfg(pool_file, tmp_path, reference="frozen")
    with pytest.raises(ValueError, match="context"):
        make_cfg(pool_file, tmp_path, context="sometimes")
    with pytest.raises(ValueError, match="answer_b"):
        make_cfg(pool_file, tmp_path, judge_prompt="{question} {answer_a}")
    cfg = make_cfg(pool_file, tmp_path)
    assert replace(cfg, context="none").context == "none"
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.parametrize("name", ["tiny_shapeworld.yaml", "video_llava_7b.yaml"])
def test_shipped_configs_load(name):
    from mmalign.config import load_config

    cfg = load_config(ISRTConfig, str(ROOT / "configs" / "isrt" / name), [])
    assert cfg.beta == 0.1 and cfg.judge == "self" and cfg.context == "retrospective"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny_shapeworld.yaml", "video_llava_7b.yaml"])
def test_shipped_config_runs_one_iteration(pool_file, tmp_path, name):
    """Each shipped config's own knobs (ZeRO-3, bf16 + gradient checkpointing + gathered generation
    for the 7B one) run one iteration in one process, with the model, data and lengths swapped."""
    from tests.distributed import run

    out = tmp_path / "run"
    media = [f"pool.path={pool_file}", "pool.shapeworld=null", f"pool.media_root={pool_file.parent}"]
    evals = [f"eval.path={pool_file}", "eval.shapeworld=null", f"eval.media_root={pool_file.parent}"]
    run([
        sys.executable, str(ROOT / "train" / "isrt.py"), "--config", str(ROOT / "configs" / "isrt" / name),
        f"model={SHIPPED}", f"out={out}", *media, "pool.per_iteration=4", *evals, "eval.max_records=2",
        "iterations=1", "max_new_tokens=8", "context_max_new_tokens=8", "judge=oracle", "temperature=2.0",
        "strategy.micro_batch_size=2", "strategy.grad_accum=1", "max_length=512", "save_every=0",
    ], timeout=300)  # fmt: skip
    rows = [json.loads(x) for x in (out / "iterations.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [-1, 0]  # the start model's evaluation, iteration 0
    assert rows[1]["pairs"] > 0 and (out / "iter_0" / "dpo" / "final").is_dir()


def test_llm_judge_asks_both_orders(pool_file, tmp_path):
    from mmalign.isrt.judges import LLMJudge, parse_letter

    cfg = make_cfg(pool_file, tmp_path, judge="llm")
    rec = load_pool(cfg.pool)[0]

    class Client:  # an OpenAI-compatible endpoint's answers, by a rule on the prompt
        config = type("C", (), {"model": "fake"})()

        def __init__(self, rule):
            self.rule, self.seen = rule, []

        def chat(self, messages, validate):
            self.seen.append(messages[-1]["content"])
            return validate(self.rule(messages[-1]["content"]))

    content = Client(lambda p: "A" if "Answer A: good" in p else "Answer: B.")
    verdict = LLMJudge(content, cfg).judge(rec, ["good", "bad"], "a red circle")
    assert (verdict["chosen"], verdict["tie"], verdict["judge"]) == (0, False, "llm:fake")
    assert all("Description of the video: a red circle" in p for p in content.seen) and len(content.seen) == 2
    assert (
        LLMJudge(Client(lambda p: "A"), cfg).judge(rec, ["good", "bad"], None)["reason"] == "order_disagree"
    )
    with pytest.raises(ValueError):
        parse_letter("neither")
