"""The hardware runbook of docs/hardware.md, rehearsed as a user would run it: every command of
its runbook block, read from the doc and run unchanged and in order, in `mode=real` against
franky-sim, each reading what the one before it wrote. The only file edited is the cell config,
with the rehearsal block the doc gives; the learner binds one loopback address and the robot
another, as two machines would, with CURVE on.

Learning is not the point: tiny networks and runs (the doc's rehearsal block). The whole walk
takes a few minutes; `pytest -m runbook` runs it alone.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from agent.data.episodes import EpisodeStore
from franka_rl.config import REPO_ROOT, load_config

pytest.importorskip("franky", reason="franky-control is not installed")
pytest.importorskip("franky_sim", reason="franky-sim is not installed")

pytestmark = [pytest.mark.runbook, pytest.mark.timeout(900)]

DOC = REPO_ROOT / "docs" / "hardware.md"
FRANKA_RL = str(Path(sys.executable).parent / "franka-rl")


# ------------------------------------------------------------------------- reading the doc


def doc_block(marker: str) -> str:
    """The fenced block right after `<!-- marker: the test reads this block -->`."""
    text = DOC.read_text()
    tag = f"<!-- {marker}: the test reads this block -->"
    assert tag in text, f"docs/hardware.md lost its '{marker}' block"
    after = text.split(tag, 1)[1].lstrip("\n")
    assert after.startswith("```"), f"the '{marker}' block must follow its tag"
    return after.split("\n", 1)[1].split("```", 1)[0]


def shell_lines(block: str) -> list[list[str]]:
    """Each command of a bash block, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


class WeightsServer:
    """A loopback HTTP server with one file: what `weights fetch` downloads in place of SERL's
    release (no internet here), in SERL's own layout at ResNet-10's real size."""

    def __init__(self):
        import hashlib
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from test_weights_fetch import make_serl_pickle

        data, _ = make_serl_pickle(seed=11)
        self.sha256 = hashlib.sha256(data).hexdigest()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/resnet10_params.pkl"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def teach_pose_additions() -> list[str]:
    """What the doc says the rehearsal adds to teach-pose (franky-sim cannot be hand-guided)."""
    found = re.search(r"teach-pose gets `([^`]+)`", DOC.read_text())
    assert found, "docs/hardware.md no longer says what the rehearsal adds to teach-pose"
    return shlex.split(found.group(1))


def merge(base: dict, edits: dict) -> dict:
    for key, value in edits.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------- running commands


def user_env(home: Path) -> dict[str, str]:
    """The user's environment, with a home of the test's own (the weights cache lives there)."""
    return {**os.environ, "HOME": str(home), "PYTHONUNBUFFERED": "1"}


class Terminal:
    """A command in a terminal of its own (the learner, the actor), logged to a file."""

    def __init__(self, words: list[str], cwd: Path, log: Path, env: dict[str, str]):
        self.log = log
        self._handle = log.open("w")
        self.proc = subprocess.Popen(words, cwd=cwd, stdout=self._handle, stderr=subprocess.STDOUT, env=env)

    def text(self) -> str:
        return self.log.read_text()

    def ctrl_c(self, timeout_s: float = 120) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._handle.close()


def run(words: list[str], cwd: Path, env: dict[str, str], stdin: str = "", timeout_s: float = 300) -> str:
    started = time.monotonic()
    result = subprocess.run(words, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=timeout_s,
                            env=env)
    output = result.stdout + result.stderr
    print(f"$ {shlex.join(words)}  ({time.monotonic() - started:.1f} s)\n{output}")
    assert result.returncode == 0, f"{shlex.join(words)} failed:\n{output}"
    assert "Traceback" not in output
    return output


def episodes_in(directory: Path) -> list:
    return list(EpisodeStore(directory).episodes()) if directory.is_dir() else []


def wait_for(condition, timeout_s: float, what: str, *terminals: Terminal) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        for terminal in terminals:
            assert terminal.proc.poll() is None, f"{terminal.log.name} exited early:\n{terminal.text()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n" + "\n".join(
            f"--- {t.log.name}\n{t.text()[-3000:]}" for t in terminals)
        time.sleep(0.5)


# ------------------------------------------------------------------------- the walk


def test_the_runbook_runs_end_to_end_against_franky_sim(tmp_path):
    from franky_sim_peer import start_or_skip

    started = time.monotonic()
    cell = tmp_path / "cell"
    (cell / "configs").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "configs" / "peg_insertion_real.yaml", cell / "configs")
    runbook = shell_lines(doc_block("runbook"))
    rehearsal = shell_lines(doc_block("rehearsal"))
    cell_edits = yaml.safe_load(doc_block("rehearsal-cell"))

    # The rehearsal's own terminal: franky-sim, and the camera videos and replay script.
    (peer_line,) = [w for w in rehearsal if w[1].endswith("franky_sim_peer.py")]
    (assets_line,) = [w for w in rehearsal if w[1].endswith("rehearsal_assets.py")]
    robot_host = peer_line[2]
    assert cell_edits["real"]["robot_ip"] == robot_host
    learner_host = cell_edits["transport"]["bind_host"]
    assert cell_edits["transport"]["host"] == learner_host != robot_host  # two "machines"
    env = user_env(tmp_path / "home")
    peer = start_or_skip(robot_host)
    weights = WeightsServer()
    learner = actor = None
    try:
        run([sys.executable, str(REPO_ROOT / assets_line[1]), *assets_line[2:]], cell, env)

        assert [w[0] for w in runbook] == ["cp"] + ["franka-rl"] * (len(runbook) - 1)
        commands = iter(runbook)

        # 0. The copy, and the one edit: the rehearsal block over it (a free port for CI's sake).
        run(next(commands), cell, env)
        config_path = cell / "configs" / "cell.yaml"
        cell_edits["transport"]["port"] = free_port(learner_host)
        config_path.write_text(yaml.safe_dump(merge(yaml.safe_load(config_path.read_text()), cell_edits)))

        def franka_rl(expected: str) -> list[str]:
            words = next(commands)
            assert words[1] == expected, f"the runbook's next command is {words[1]}, the test expects {expected}"
            return [FRANKA_RL, *words[1:]]

        # The pretrained backbone, from the loopback "release" (the doc names the additions).
        assert "`weights fetch` that file's `--url` and `--sha256`" in DOC.read_text()
        output = run(franka_rl("weights") + ["--url", weights.url, "--sha256", weights.sha256], cell, env)
        fetched = Path(output.strip().splitlines()[0].strip())
        assert fetched == tmp_path / "home/.cache/franka_rl/weights/resnet10.npz" and fetched.is_file()

        # 1. Read-only bring-up: the arm and both cameras answer.
        output = run(franka_rl("robot-check"), cell, env)
        assert "0 failed" in output and "PASS  camera wrist_2" in output and "PASS  connection" in output

        # 2. Teach (Enter twice: the target, then the start), then the full check with motion.
        run(franka_rl("teach-pose") + teach_pose_additions(), cell, env, stdin="\n\n")
        taught = load_config(cell / "configs" / "my_cell.yaml")
        assert taught.task.reset_pose[2] == pytest.approx(taught.task.target_pose[2] + 0.05, abs=1e-5)
        output = run(franka_rl("robot-check"), cell, env)
        assert "0 failed, 0 skipped" in output and "PASS  compliant move" in output

        # 3-4. Demos and reward frames through the replay device, on the simulated arm.
        run(franka_rl("record-demos"), cell, env)
        demos = episodes_in(cell / "runs/real/demos")
        assert sum(e.success for e in demos) == cell_edits["record"]["num_successes"]
        assert all(e.metadata["mode"] == "real" and e.observations["wrist_2"].shape[1:] == (32, 32, 3)
                   for e in demos)
        run(franka_rl("record-rewards"), cell, env)
        frames = episodes_in(cell / "runs/real/reward_frames")
        labels = np.concatenate([e.frame_info["success_label"] for e in frames])
        assert labels.sum() >= cell_edits["record"]["reward_positives"]

        # 5-6. The classifier and Cal-QL pre-training read what was recorded.
        run(franka_rl("train-classifier"), cell, env)
        assert any((cell / "runs/real/classifier").iterdir())
        output = run(franka_rl("pretrain"), cell, env)
        assert "cpu" in output.lower()  # it says where it computes
        assert any((cell / "runs/real/pretrain/checkpoints").iterdir())

        # 7. Keys, then the learner on one address and the actor at the "robot" on another.
        run(franka_rl("transport-keys"), cell, env)
        assert (cell / "keys" / "learner.key_secret").is_file()
        learner = Terminal(franka_rl("learner"), cell, tmp_path / "learner.log", env)
        actor = Terminal(franka_rl("actor"), cell, tmp_path / "actor.log", env)
        actor_episodes = cell / "runs/real/actors/actor-0/episodes"
        wait_for(lambda: len(episodes_in(actor_episodes)) >= 3, 400, "three online episodes", learner, actor)
        assert actor.ctrl_c() == 0, actor.text()
        assert learner.ctrl_c() == 0, learner.text()
        print(learner.text(), actor.text(), sep="\n")
        assert learner_host in learner.text() and "CURVE" in learner.text()
        assert "Traceback" not in learner.text() + actor.text()
        assert "RANDOM" not in learner.text() + actor.text()  # the fetched backbone is what they load
        online = episodes_in(actor_episodes)
        assert all(e.metadata["mode"] == "real" for e in online)
        assert any((cell / "runs/real/learner").rglob("*")), "the learner wrote no checkpoint"

        # 8. Evaluation of the learner's last checkpoint on the simulated arm.
        output = run(franka_rl("eval"), cell, env)
        assert f"{cell_edits['eval']['episodes']} episodes" in output or "success" in output.lower()
        assert next(commands, None) is None  # every runbook command ran
    finally:
        for terminal in (actor, learner):
            if terminal is not None and terminal.proc.poll() is None:
                terminal.ctrl_c(30)
        peer.close()
        weights.close()
        print(f"runbook rehearsal: {time.monotonic() - started:.0f} s")
