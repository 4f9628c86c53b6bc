"""Hostile input against a live learner transport: the seeded corpus of `agent/transport/fuzzing.py`
(every known trigger, then random mutations of valid messages) sent over loopback, one case at a
time, each followed by a probe heartbeat that must be answered (else: a hang).

    .venv/bin/python benchmarks/transport_fuzz.py [--cases 2000] [--seeds 0 1 2]

Prints, per seed: cases, rejected (by reason), valid chunks stored, thread deaths, hangs, stored
invalid values, whether a real actor is accepted afterwards, wall time. Exits 1 if any run had a
thread death, a hang, an invalid value stored or a refused real actor.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.transport.fuzzing import run_corpus  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # rejections are counted; their warnings are not the point here
    failed = False
    for seed in args.seeds:
        report = run_corpus(args.cases, seed=seed)
        print(f"seed {seed}")
        print(report.table())
        if report.problems:
            print("problems:", *report.problems, sep="\n  ")
        failed |= bool(report.thread_deaths or report.hangs or report.stored_invalid or not report.actor_accepted)
        print()
    return int(failed)


if __name__ == "__main__":
    raise SystemExit(main())
