"""How long a learner checkpoint stalls training with a large replay buffer, and what resume costs.

    .venv/bin/python benchmarks/checkpoint_stall.py [--transitions 100000] [--new 1200]

The learner is built by the composition root with the default configuration (two 128x128 wrist
cameras, the default agent with its frozen ResNet-10 and the float16 feature cache) and a buffer
holding `--transitions` transitions in 100-step episodes. The features of every slot are real
ResNet-10 outputs (shape 4x4x512 per camera, float16 as the learner stores them), computed for a
set of distinct frames and reused across episodes so the buffer fills in seconds rather than the
hour that encoding 200k frames takes on a CPU; bytes, shapes and dtypes are those of a real run.

1. checkpoint 1 writes the whole ring (what every checkpoint wrote before snapshots became
   incremental): its wall time is the baseline;
2. `--rounds` times, `--new` more transitions arrive (1200 = two minutes of one 10 Hz actor, the
   default learner.checkpoint_interval_s), then a checkpoint: the stall it adds to the learner
   step it interrupts (median and max; target <= 1 s at 100k) and the bytes it wrote;
3. a fresh learner process resumes from the last checkpoint: its wall time and whether any frame was
   encoded again (it must not be: the cache comes back from the segments).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from franka_rl.assemble import build_learner  # noqa: E402
from franka_rl.config import load_config  # noqa: E402

EPISODE_STEPS = 100
DISTINCT_FRAMES = 64


def learner_config(run_dir: str, capacity: int):
    return load_config(None, [f"output_dir={run_dir}", f"learner.run_dir={run_dir}/learner",
                              "learner.tensorboard=false", f"learner.buffer_capacity={capacity}"])


def add_episodes(learner, episodes: int, frames: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    spec = learner.spec
    for _ in range(episodes):
        picks = rng.integers(0, DISTINCT_FRAMES, EPISODE_STEPS + 1)
        observations = {k: (frames[k][picks] if k in frames else
                            rng.normal(size=(EPISODE_STEPS + 1, *shape)).astype(dtype))
                        for k, (shape, dtype) in spec.items()}
        rewards = np.zeros(EPISODE_STEPS, np.float32)
        rewards[-1] = 1.0
        terminated = np.zeros(EPISODE_STEPS, bool)
        terminated[-1] = True
        learner.buffer.add_episode(observations, rng.uniform(-1, 1, (EPISODE_STEPS, learner.action_dim)),
                                   rewards, terminated, np.zeros(EPISODE_STEPS, bool))


def measure(args) -> dict:
    rng = np.random.default_rng(0)
    run_dir = args.run_dir
    capacity = (args.transitions + args.new) // EPISODE_STEPS * (EPISODE_STEPS + 1) + EPISODE_STEPS + 1
    learner = build_learner(learner_config(run_dir, capacity), report=lambda message: None)
    try:
        cameras = [k for k in learner.agent.spec.image_keys]
        frames = {k: rng.integers(0, 256, (DISTINCT_FRAMES, *learner.spec[k][0]), dtype=np.uint8) for k in cameras}
        started = time.perf_counter()
        real = {k: np.asarray(learner.feature_fn(v)) for k, v in frames.items()}  # the real backbone
        encode_s = time.perf_counter() - started
        by_bytes = {k: {frames[k][i].tobytes(): real[k][i] for i in range(DISTINCT_FRAMES)} for k in cameras}
        buffer = learner.buffer

        def lookup(batch: np.ndarray) -> np.ndarray:  # the real features of the frames in the batch
            for key in cameras:
                table = by_bytes[key]
                if batch[0].tobytes() in table:
                    return np.stack([table[f.tobytes()] for f in batch])
            raise KeyError("a frame this benchmark did not encode")
        buffer._feature_fn = lookup
        started = time.perf_counter()
        add_episodes(learner, args.transitions // EPISODE_STEPS, frames, rng)
        fill_s = time.perf_counter() - started
        stored = buffer.num_transitions
        started = time.perf_counter()
        learner.checkpoint()
        full_s = time.perf_counter() - started
        replay = Path(run_dir) / "learner" / "replay"
        full_bytes = (replay / "buffer_000001.npz").stat().st_size
        stalls, sizes = [], []
        for _ in range(args.rounds):
            add_episodes(learner, args.new // EPISODE_STEPS, frames, rng)
            started = time.perf_counter()
            index = learner.checkpoint()
            stalls.append(time.perf_counter() - started)
            sizes.append((replay / f"buffer_{index:06d}.npz").stat().st_size)
        result = {"stored": stored, "stored_after": buffer.num_transitions, "buffer_bytes": buffer.nbytes,
                  "encode_s": encode_s, "fill_s": fill_s, "full_s": full_s, "full_bytes": full_bytes,
                  "incremental_s": statistics.median(stalls), "incremental_max_s": max(stalls),
                  "incremental_bytes": statistics.median(sizes), "capacity": capacity}
    finally:
        learner.server.close()
    del learner, buffer
    gc.collect()
    return result


def resume(run_dir: str, capacity: int) -> dict:
    lines: list[str] = []
    started = time.perf_counter()
    learner = build_learner(learner_config(run_dir, capacity), report=lines.append)
    seconds = time.perf_counter() - started
    try:
        return {"resume_s": seconds, "features_restored": bool(learner.buffer.features_restored),
                "encoded_again": any("encoding the frames" in line for line in lines),
                "transitions": learner.buffer.num_transitions}
    finally:
        learner.server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transitions", type=int, default=100_000)
    parser.add_argument("--new", type=int, default=1200)
    parser.add_argument("--rounds", type=int, default=3, help="incremental checkpoints timed (median, max)")
    parser.add_argument("--run-dir", default="")
    parser.add_argument("--resume-only", type=int, default=0, help=argparse.SUPPRESS)  # the capacity
    args = parser.parse_args()
    if args.resume_only:
        print(json.dumps(resume(args.run_dir, args.resume_only)))
        return
    with tempfile.TemporaryDirectory(dir=args.run_dir or None) as tmp:
        args.run_dir = tmp
        r = measure(args)
        child = subprocess.run([sys.executable, __file__, "--run-dir", tmp, "--resume-only", str(r["capacity"])],
                               capture_output=True, text=True, check=True)
        r.update(json.loads(child.stdout.strip().splitlines()[-1]))
    gib = 1024 ** 3
    print(f"buffer: {r['stored']:,} transitions (two 128² cameras + features), {r['buffer_bytes'] / gib:.1f} GiB "
          f"resident; filled in {r['fill_s']:.0f} s ({DISTINCT_FRAMES} distinct frames per camera encoded by the real "
          f"ResNet-10 in {r['encode_s']:.1f} s)")
    print(f"| checkpoint at {r['stored'] // 1000}k stored transitions | wall time (stall) | buffer bytes written |")
    print("|---|---:|---:|")
    print(f"| whole ring (checkpoint 1; every checkpoint before incremental snapshots) | {r['full_s']:.1f} s | "
          f"{r['full_bytes'] / gib:.2f} GiB |")
    ok = "ok" if r["incremental_s"] <= 1.0 else "OVER 1 s"
    print(f"| incremental, {args.new} new transitions (median of checkpoints 2-{args.rounds + 1}; max "
          f"{r['incremental_max_s']:.2f} s) | {r['incremental_s']:.2f} s ({ok}) | "
          f"{r['incremental_bytes'] / 1024 ** 2:.0f} MiB |")
    print(f"resume from checkpoint {args.rounds + 1} ({r['transitions']:,} transitions) in a fresh process: {r['resume_s']:.0f} s; "
          f"feature cache restored: {r['features_restored']}; frames encoded again: "
          f"{'yes' if r['encoded_again'] else 'none'}")


if __name__ == "__main__":
    main()
