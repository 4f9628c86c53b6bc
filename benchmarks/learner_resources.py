"""One table of the learner's resource figures, every row measured in this one run.

    .venv/bin/python benchmarks/learner_resources.py

Runs, one after the other on an otherwise idle machine (about 15 minutes on this project's 2-core
CPU; the 100k-transition buffer needs ~13 GiB of memory and ~13 GiB of disk):

- benchmarks/buffer_memory.py       bytes per stored transition with the real feature cache;
- benchmarks/checkpoint_stall.py    checkpoint stall at 100k transitions, resume without re-encoding;
- benchmarks/learner_prefetch.py    learner step with prefetch vs the compiled step alone;
- benchmarks/gym_feature_cache.py   train-gym's cached image update vs the state-only update;

and prints one markdown table with each figure beside its target (docs/processes.md holds it).
Each script's own output is printed first; a figure missing from it stops the run with its name.
The two-device sharded update is a test (tests/test_sharding.py), not a figure.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(script: str, *args: str) -> str:
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True)
    print(f"--- {script} {' '.join(args)} ({time.monotonic() - started:.0f} s)\n{result.stdout.rstrip()}")
    if result.returncode:
        sys.exit(f"{script} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def find(pattern: str, text: str, what: str) -> re.Match:
    match = re.search(pattern, text)
    if match is None:
        sys.exit(f"no figure for {what} in the output above (pattern {pattern!r})")
    return match


def main() -> None:
    memory = run("buffer_memory.py")
    stall = run("checkpoint_stall.py")
    prefetch = run("learner_prefetch.py")
    gym = run("gym_feature_cache.py")

    per100 = find(r"episodes of 100: .*?bytes/transition (\d+) = ([\d.]+) x", memory, "bytes per transition")
    resident = find(r"episodes of 100:.*\n\s*resident replay memory at 100k such transitions: ([\d.]+) GiB",
                    memory, "resident memory")
    whole = find(r"\| whole ring .*? \| ([\d.]+) s \| ([\d.]+) GiB \|", stall, "whole-ring checkpoint")
    incremental = find(r"\| incremental, (\d+) new transitions \(median .*?max ([\d.]+) s\) \| ([\d.]+) s .*? \| "
                       r"(\d+) MiB \|", stall, "incremental checkpoint")
    resumed = find(r"in a fresh process: (\d+) s; feature cache restored: (\w+); frames encoded again: (\w+)",
                   stall, "resume")
    state_row = find(r"state only\s+\|\s+([\d.]+) ms \|\s+([\d.]+) ms \|\s+([\d.]+) ms \|.*?\|\s+([\d.]+)x \|",
                     prefetch, "prefetch, state only")
    camera_row = find(r"state \+ 2 x (\d+)² cams\s+\|\s+([\d.]+) ms \|\s+([\d.]+) ms \|\s+([\d.]+) ms \|.*?\|"
                      r"\s+([\d.]+)x \|", prefetch, "prefetch, cameras")
    cached = find(r"image update, cached feats\s+([\d.]+) ms\s+\(([\d.]+)x state-only", gym, "train-gym cached")

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    ratio = float(per100.group(2))
    stall_s = float(incremental.group(3))
    rows = [
        ("bytes per stored transition, two 128² cameras + float16 features, 100-step episodes",
         f"{int(per100.group(1)):,} B = {ratio:.3f} x one uint8 frame per camera", "<= 1.35 x",
         verdict(ratio <= 1.35)),
        ("learner's resident replay memory at 100k such transitions", f"{resident.group(1)} GiB",
         "stated", "-"),
        (f"checkpoint at 100k, {incremental.group(1)} new transitions (incremental segment)",
         f"median {stall_s:.2f} s (max {incremental.group(2)} s), {incremental.group(4)} MiB written "
         f"(whole ring: {float(whole.group(1)):.1f} s, "
         f"{whole.group(2)} GiB)", "<= 1 s", verdict(stall_s <= 1.0)),
        ("resume at 100k", f"{resumed.group(1)} s; feature cache restored: {resumed.group(2)}; frames encoded "
         f"again: {resumed.group(3)}", "no re-encoding", verdict(resumed.group(3) == "none")),
        ("learner step with prefetch / compiled step alone, state only",
         f"{float(state_row.group(3)):.0f} / {float(state_row.group(1)):.0f} ms = {float(state_row.group(4)):.2f} x",
         "<= 1.1 x", verdict(float(state_row.group(4)) <= 1.1)),
        (f"learner step with prefetch / compiled step alone, two {camera_row.group(1)}² cameras",
         f"{float(camera_row.group(4)):.0f} / {float(camera_row.group(2)):.0f} ms = "
         f"{float(camera_row.group(5)):.2f} x", "<= 1.1 x", verdict(float(camera_row.group(5)) <= 1.1)),
        ("train-gym image update with the feature cache / state-only update (same MLPs)",
         f"{float(cached.group(1)):.1f} ms = {float(cached.group(2)):.2f} x", "<= 2 x",
         verdict(float(cached.group(2)) <= 2.0)),
    ]
    print(f"\n### Learner resources (benchmarks/learner_resources.py, {time.strftime('%Y-%m-%d')})\n")
    print("| figure | measured | target | |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
