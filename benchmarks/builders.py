"""Rule-based builder throughput on ShapeWorld-sized records (goal: ≥ 2,000 records/s per core).

    OMP_NUM_THREADS=1 python benchmarks/builders.py --n 20000

Writes N ShapeWorld scenes (default world: 1–6 objects) and their LLaVA records to a temporary
folder, then runs the LRV builder (6 instructions per scene, both output formats) and the POVID
builder (scene graphs joined on scene_id, co-occurrence mined first) end to end — streaming input,
resume bookkeeping, commits with fsync, summary. The builders are single-threaded, so records/s
per core = records / CPU seconds of this process (wall-clock rates are printed too: on a busy
machine they are lower).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from mmalign.builders.lrv import LRVBuilder, LRVOptions
from mmalign.builders.povid import POVIDBuilder, POVIDOptions, load_scene_index, mine_stats
from mmalign.builders.runner import run_builder
from mmalign.shapeworld.generate import _image_records
from mmalign.shapeworld.world import WorldConfig, sample_scene


def timed(fn):  # noqa: ANN001, ANN201
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="scenes")
    args = parser.parse_args()
    cfg = WorldConfig()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scenes, llava = [], []
        for i in range(args.n):
            s = sample_scene(random.Random(f"0:image:{i}"), cfg, f"img_{i:06d}")
            scenes.append(json.dumps({**s.to_dict(), "image": f"images/{s.id}.png"}))
            if i < args.n // 4:
                llava += _image_records(s, cfg, 0, i, False)
        (tmp / "scenes.jsonl").write_text("\n".join(scenes) + "\n")
        (tmp / "llava.jsonl").write_text("".join(json.dumps(r) + "\n" for r in llava))
        print(
            f"{args.n} scenes ({sum(map(len, scenes)) / len(scenes):.0f} bytes each), {len(llava)} LLaVA records"
        )

        lrv = LRVBuilder(LRVOptions(image_size=cfg.image_size))
        s, wall, cpu = timed(
            lambda: run_builder(lrv, [tmp / "scenes.jsonl"], tmp / "lrv", {}, progress=False)
        )
        n_out = s["total_counts"]["positive"] + s["total_counts"]["negative"]
        print(f"LRV   : {s['processed']} scenes → {n_out} instructions: {s['processed'] / cpu:,.0f} records/s per core "
              f"(CPU {cpu:.2f} s; wall {s['processed'] / wall:,.0f}/s)")  # fmt: skip

        index = load_scene_index([tmp / "scenes.jsonl"], cfg.image_size)
        (stats, _, mine_cpu) = timed(lambda: mine_stats([tmp / "llava.jsonl"], index))
        povid = POVIDBuilder(POVIDOptions(), stats, index)
        s, wall, cpu = timed(
            lambda: run_builder(povid, [tmp / "llava.jsonl"], tmp / "povid", {}, progress=False)
        )
        print(f"POVID : {s['processed']} LLaVA records → pairs {dict(sorted(s['counts'].items()))}: "
              f"{s['processed'] / cpu:,.0f} records/s per core (CPU {cpu:.2f} s; wall {s['processed'] / wall:,.0f}/s; "
              f"co-occurrence mining {mine_cpu:.2f} s CPU)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
