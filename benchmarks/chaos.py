"""Chaos: a learner and two actors as separate processes on loopback (the state-only twin, tiny
networks), SIGKILLed at random moments while CPU hogs keep every core busy; each killed process is
started again. At the end every transition every actor recorded must be stored exactly once.

    .venv/bin/python benchmarks/chaos.py [--learner-kills 10] [--actor-kills 3] [--hogs 2] [--seed 0]

Prints kills, restarts, learner resumes, produced (steps in the actors' episode files), stored (in
the learner's last checkpoint), lost, stored twice, by stream, and wall time. Exits 1 unless
produced = stored for every stream and the buffer holds exactly that many transitions.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.checkpoint import AgentCheckpointer  # noqa: E402
from agent.data.episodes import EpisodeStore  # noqa: E402
from agent.data.replay_buffer import ReplayBuffer  # noqa: E402
from agent.learner import snapshot_chain  # noqa: E402
from franka_rl.assemble import reward_shaping  # noqa: E402
from franka_rl.config import load_config  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
# The integration tests' tiny actor-learner setup (10-step episodes, a checkpoint every second).
from test_actor_learner import free_port, overrides  # noqa: E402

ACTORS = ("actor-0", "actor-1")


class Proc:
    def __init__(self, name: str, args: list[str], run: Path):
        self.log = run / f"{name}.log"
        with self.log.open("w") as handle:
            env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
            self.proc = subprocess.Popen([sys.executable, "-m", "franka_rl.cli", *args], cwd=REPO, env=env,
                                         stdout=handle, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait(60)

    def stop(self, timeout: float) -> int | None:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None


def _hog() -> None:
    while True:
        pass


def recorded(run: Path) -> dict[str, int]:
    """Steps per stream in the actors' episode files."""
    by_stream: dict[str, int] = {}
    for actor in ACTORS:
        directory = run / "actors" / actor / "episodes"
        if directory.is_dir():
            for _, meta in EpisodeStore(directory).metadata():
                by_stream[meta["stream"]] = by_stream.get(meta["stream"], 0) + int(meta["length"])
    return by_stream


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learner-kills", type=int, default=10)
    parser.add_argument("--actor-kills", type=int, default=3)
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default="", help="keep the run here (default: a temporary folder)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    run = Path(args.run_dir or tempfile.mkdtemp(prefix="chaos-"))
    run.mkdir(parents=True, exist_ok=True)
    common = [*overrides(run, free_port()), "actor.flush_timeout_s=180"]  # time for re-sends at stop
    hogs = [mp.get_context("spawn").Process(target=_hog, daemon=True) for _ in range(args.hogs)]
    for hog in hogs:
        hog.start()
    started = time.monotonic()
    counts = {"learner": 0, "actor": 0}
    names = {"learner": 0, **{a: 0 for a in ACTORS}}

    learner_starts: list[bool] = []  # per learner start: was there a checkpoint to resume from?

    def start(role: str) -> Proc:
        names[role] += 1
        if role == "learner":
            learner_starts.append(bool(AgentCheckpointer(run / "learner" / "checkpoints",
                                                         max_to_keep=None).all_steps()))
        cli = ["learner", *common] if role == "learner" else ["actor", *common, f"actor.actor_id={role}"]
        return Proc(f"{role}-{names[role]}", cli, run)

    procs = {role: start(role) for role in ("learner", *ACTORS)}
    resumes = 0  # learners that said they resumed from a checkpoint
    killed_starting = 0  # learners killed before they listened (still restoring or compiling)
    try:
        # Kills at random moments: the learner's spread over its whole life (during compile, while
        # training, mid-checkpoint), the actors' in between; every process is restarted at once.
        schedule = ["learner"] * args.learner_kills + [rng.choice(ACTORS) for _ in range(args.actor_kills)]
        rng.shuffle(schedule)
        for victim in schedule:
            time.sleep(rng.uniform(15.0, 60.0))
            for role, proc in procs.items():
                if not proc.alive() and role != victim:
                    print(f"{role} exited on its own:\n{proc.text()[-3000:]}")
                    return 1
            procs[victim].kill()
            counts["learner" if victim == "learner" else "actor"] += 1
            if victim == "learner":
                resumes += "resumed from checkpoint" in procs[victim].text()
                killed_starting += "learner listening on" not in procs[victim].text()
            print(f"[{time.monotonic() - started:6.0f} s] SIGKILL {victim} "
                  f"({counts['learner']} learner / {counts['actor']} actor kills)", flush=True)
            procs[victim] = start(victim)
        # The last restarts catch up: the learner listens (compiled, resumed) and then trains a while.
        deadline = time.monotonic() + 600
        while "learner listening on" not in procs["learner"].text() and time.monotonic() < deadline:
            time.sleep(1.0)
        time.sleep(30.0)
        # "At the end" means once every restarted actor has re-sent its earlier incarnations'
        # episodes (a loaded learner takes them at its own pace, beside the live streams).
        def recovering() -> list[str]:
            return [a for a in ACTORS if procs[a].text().count(" chunk(s) (") >
                    procs[a].text().count("re-sent steps are in a learner checkpoint")]
        while recovering() and time.monotonic() < deadline + 1200:
            time.sleep(2.0)
        if recovering():
            print(f"still re-sending earlier incarnations when stopped: {recovering()}")
        for actor in ACTORS:
            code = procs[actor].stop(timeout=300)
            if code != 0:
                print(f"{actor} stopped with {code}:\n{procs[actor].text()[-3000:]}")
        resumes += "resumed from checkpoint" in procs["learner"].text()
        code = procs["learner"].stop(timeout=300)
        if code != 0:
            print(f"learner stopped with {code}:\n{procs['learner'].text()[-3000:]}")
    finally:
        for proc in procs.values():
            proc.kill()
        for hog in hogs:
            hog.terminate()
    wall = time.monotonic() - started

    produced = recorded(run)
    checkpointer = AgentCheckpointer(run / "learner" / "checkpoints", max_to_keep=None)
    finished = checkpointer.finished_steps()  # the last kill may have cut a save short
    if not finished:
        print(f"FAILED: the learner left no checkpoint (logs in {run})")
        return 1
    extra = checkpointer.read_meta(finished[-1])["extra"]
    stored = {s: int(state["transitions"]) for s, state in extra["streams"].items()}
    buffer = ReplayBuffer.load_chain([run / "learner" / "replay" / s["file"] for s in snapshot_chain(extra)],
                                     shaping=reward_shaping(load_config(None).agent))
    lost = sum(max(0, n - stored.get(s, 0)) for s, n in produced.items())
    twice = sum(max(0, n - produced.get(s, 0)) for s, n in stored.items())
    print()
    print("| figure | value |\n|---|---|")
    for name, value in [
        ("CPU hogs (busy processes)", args.hogs), ("learner SIGKILLs", counts["learner"]),
        ("actor SIGKILLs", counts["actor"]),
        ("learner starts / with a checkpoint to resume from", f"{len(learner_starts)} / {sum(learner_starts)}"),
        ("learners that resumed from it", resumes),
        ("learners killed while starting (before listening)", killed_starting),
        ("actor streams (incarnations)", len(produced)), ("produced (steps in episode files)", sum(produced.values())),
        ("stored (learner's last checkpoint)", sum(stored.values())), ("replay buffer transitions", buffer.num_transitions),
        ("lost", lost), ("stored twice", twice), ("wall time", f"{wall:.0f} s"),
    ]:
        print(f"| {name} | {value} |")
    ok = produced == {s: n for s, n in stored.items() if n or s in produced} and buffer.num_transitions == sum(
        produced.values())
    if not ok:
        print("by stream, produced vs stored:")
        for s in sorted(set(produced) | set(stored)):
            print(f"  {s}: {produced.get(s, 0)} vs {stored.get(s, 0)}")
    print("ok" if ok else "FAILED: produced != stored")
    print(f"run folder: {run}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
