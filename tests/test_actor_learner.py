"""Actor and learner as separate processes on loopback, with the state-only twin and tiny networks:
transitions arrive, parameters change on the actor, the learner is killed and restarted (it resumes
from its checkpoint while the actor keeps recording, and no transition is lost or stored twice), a
second actor joins mid-run, and a malformed message is rejected without a crash."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from agent.checkpoint import AgentCheckpointer
from agent.data.episodes import EpisodeStore
from agent.data.replay_buffer import ReplayBuffer
from agent.learner import snapshot_chain
from franka_rl.assemble import reward_shaping
from franka_rl.config import load_config

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def overrides(tmp_path: Path, port: int) -> list[str]:
    return [
        "env.cameras=[]", "task.max_episode_steps=10", f"output_dir={tmp_path}", f"transport.port={port}",
        "transport.heartbeat_interval_s=0.2", "transport.heartbeat_timeout_s=3",
        "agent.network.critic_hidden_dims=[32,32]", "agent.network.actor_hidden_dims=[32,32]",
        "agent.network.num_critics=2", "agent.encoder.proprio_dim=0", "agent.sac.batch_size=16", "agent.sac.utd=2",
        "agent.online.warmup_steps=20",
        "learner.steps_per_transition=0.25", "learner.publish_every_steps=2", "learner.checkpoint_every_steps=4",
        "learner.checkpoint_interval_s=1", "learner.tensorboard=false", "learner.status_interval_s=5",
        "actor.on_learner_loss=continue", "actor.flush_timeout_s=60", "actor.status_interval_s=5",
    ]


class Process:
    def __init__(self, name: str, args: list[str], log_dir: Path):
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.handle = self.log.open("w")
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "franka_rl.cli", *args], cwd=REPO, env=env,
                                     stdout=self.handle, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGINT, timeout=90) -> int:
        if self.alive():
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.handle.close()

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(30)


def wait_until(predicate, timeout, what, processes=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for p in processes:
            assert p.alive(), f"{p.name} died:\n{p.text()[-3000:]}"
        time.sleep(0.2)
    logs = "\n".join(f"--- {p.name}\n{p.text()[-2000:]}" for p in processes)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def episodes(directory: Path) -> list[dict]:
    if not directory.is_dir():
        return []
    return [meta for _, meta in EpisodeStore(directory).metadata()]


def checkpoint_extra(run_dir: Path) -> dict:
    """The newest finished checkpoint's caller data (the learner may be saving the next one)."""
    checkpointer = AgentCheckpointer(run_dir / "checkpoints", max_to_keep=None)
    finished = checkpointer.finished_steps()
    return checkpointer.read_meta(finished[-1])["extra"] if finished else {}


def send_garbage(port: int) -> None:
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 500)
    sock.connect(f"tcp://127.0.0.1:{port}")
    sock.send_multipart([b"FRRL\x00\x01\x04\x00garbage", b"\x00" * 7])
    sock.send_multipart([os.urandom(40)])
    sock.close()


@pytest.mark.timeout(300)
def test_actor_learner_survive_a_learner_crash_and_lose_nothing(tmp_path):
    port = free_port()
    common = overrides(tmp_path, port)
    learner_dir = tmp_path / "learner"
    store_0 = tmp_path / "actors" / "actor-0" / "episodes"
    store_1 = tmp_path / "actors" / "actor-1" / "episodes"
    processes: list[Process] = []
    try:
        learner = Process("learner-1", ["learner", *common], tmp_path)
        processes.append(learner)
        actor_0 = Process("actor-0", ["actor", *common, "actor.actor_id=actor-0"], tmp_path)
        processes.append(actor_0)

        # Transitions arrive, the learner trains and checkpoints, new parameters reach the actor.
        wait_until(lambda: any(m["params_version"] > 0 for m in episodes(store_0))
                   and checkpoint_extra(learner_dir).get("learner_steps", 0) > 0,
                   150, "learner steps and new parameters on the actor", processes)
        assert any(m["source"] == "warm-up" for m in episodes(store_0))

        # A malformed message is rejected and logged; the learner goes on.
        send_garbage(port)
        wait_until(lambda: learner.text().count("rejected a message") >= 2, 20, "the rejections", processes)
        assert learner.alive()

        # Kill the learner mid-run; the actor keeps recording meanwhile.
        learner.kill()
        recorded_at_crash = len(episodes(store_0))
        wait_until(lambda: len(episodes(store_0)) >= recorded_at_crash + 3, 60, "episodes while the learner is down",
                   [actor_0])
        learner = Process("learner-2", ["learner", *common], tmp_path)
        processes.append(learner)
        wait_until(lambda: "resumed from checkpoint" in learner.text(), 90, "the learner to resume", processes[1:])

        # A second actor joins mid-run.
        actor_1 = Process("actor-1", ["actor", *common, "actor.actor_id=actor-1"], tmp_path)
        processes.append(actor_1)
        wait_until(lambda: len(episodes(store_1)) >= 2, 90, "the second actor's episodes", processes[1:])
        wait_until(lambda: "actor-1" in str(checkpoint_extra(learner_dir).get("streams", {})), 60,
                   "the second actor's transitions in a checkpoint", processes[1:])

        # Stop the actors (each ends its episode and waits until the learner stored it), then the learner.
        assert actor_0.stop() == 0, actor_0.text()[-3000:]
        assert actor_1.stop() == 0, actor_1.text()[-3000:]
        assert learner.stop() == 0, learner.text()[-3000:]
    finally:
        for p in processes:
            p.kill()

    produced = sum(m["length"] for m in episodes(store_0) + episodes(store_1))
    extra = checkpoint_extra(learner_dir)
    by_actor = {}
    for state in extra["streams"].values():
        by_actor[state["actor"]] = by_actor.get(state["actor"], 0) + state["transitions"]
    assert by_actor == {"actor-0": sum(m["length"] for m in episodes(store_0)),
                        "actor-1": sum(m["length"] for m in episodes(store_1))}
    assert extra["transitions"] == produced  # 0 lost, none twice
    assert "did not confirm" not in actor_0.text() + actor_1.text()
    buffer = ReplayBuffer.load_chain([learner_dir / "replay" / s["file"] for s in snapshot_chain(extra)],
                                     shaping=reward_shaping(load_config(None).agent))
    assert buffer.num_transitions == produced
    assert episodes(store_0)[-1]["params_version"] > 0


def test_a_killed_actor_restarted_resends_what_no_learner_checkpointed(tmp_path):
    """The actor and the learner are both SIGKILLed before any checkpoint: the chunks the actor held
    in memory and the learner's buffer are gone, only the episode files remain. The restarted actor
    re-sends its earlier incarnation's episodes from its folder beside its new ones, and the
    learner ends with every recorded transition exactly once."""
    port = free_port()
    common = overrides(tmp_path, port)
    never_checkpoint = ["learner.checkpoint_every_steps=1000000", "learner.checkpoint_interval_s=100000"]
    learner_dir = tmp_path / "learner"
    store = tmp_path / "actors" / "actor-0" / "episodes"
    processes: list[Process] = []
    try:
        learner = Process("learner-1", ["learner", *common, *never_checkpoint], tmp_path)
        actor = Process("actor-0a", ["actor", *common, "actor.actor_id=actor-0"], tmp_path)
        processes += [learner, actor]
        wait_until(lambda: len(episodes(store)) >= 3, 150, "three recorded episodes", processes)
        actor.kill()
        learner.kill()
        assert checkpoint_extra(learner_dir) == {}  # nothing was ever durable
        first_incarnation = {m["stream"] for m in episodes(store)}
        assert len(first_incarnation) == 1

        learner = Process("learner-2", ["learner", *common], tmp_path)
        actor = Process("actor-0b", ["actor", *common, "actor.actor_id=actor-0"], tmp_path)
        processes += [learner, actor]
        wait_until(lambda: "are in a learner checkpoint" in actor.text(), 150,
                   "the earlier incarnation's episodes in a checkpoint", processes[2:])
        wait_until(lambda: len({m["stream"] for m in episodes(store)}) == 2, 60, "the new incarnation's episodes",
                   processes[2:])
        assert actor.stop() == 0, actor.text()[-3000:]
        assert learner.stop() == 0, learner.text()[-3000:]
    finally:
        for p in processes:
            p.kill()

    recorded = episodes(store)
    extra = checkpoint_extra(learner_dir)
    by_stream = {}
    for meta in recorded:
        by_stream[meta["stream"]] = by_stream.get(meta["stream"], 0) + meta["length"]
    assert {s: state["transitions"] for s, state in extra["streams"].items()} == by_stream
    assert extra["transitions"] == sum(m["length"] for m in recorded)  # 0 lost, none twice
