"""Recording on the arm (`mode=real`) as a user runs it, against franky-sim: `record-demos` and
`record-rewards` build their env with the same `franka_rl.assemble.build_env` as the actor, over
the franky backend and an OpenCV camera reading a video file, driven by the headless replay
device (the actions of an episode file, with its success marks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.data.episodes import EpisodeRecorder, EpisodeStore, make_metadata
from franka_rl.config import CONFIG_DIR, REPO_ROOT

pytest.importorskip("franky", reason="franky-control is not installed")

from test_cameras import write_video  # noqa: E402

REAL_CONFIG = CONFIG_DIR / "peg_insertion_real.yaml"
FRANKA_RL = str(Path(sys.executable).parent / "franka-rl")
PEER_HOST = "127.0.0.36"  # this file's own loopback address
STEPS = 4


@pytest.fixture(scope="module")
def peer():
    from franky_sim_peer import start_or_skip

    server = start_or_skip(PEER_HOST)
    yield server
    server.close()


def real_overrides(peer, video: Path) -> list[str]:
    return [f"real.robot_ip={peer.host}", "real.realtime=false", "real.relative_dynamics_factor=0.5",
            "env.cameras=[wrist_1]", f"real.cameras=[{{name: wrist_1, kind: opencv, device: '{video}', fps: 30}}]",
            "env.image_height=32", "env.image_width=32", f"task.max_episode_steps={STEPS + 2}"]


def script_episode(directory: Path, success: bool, labels: list[bool] | None = None) -> Path:
    """An episode file whose actions nudge the arm 1 mm a step (what the replay device drives)."""
    store = EpisodeStore(directory, create=True)
    recorder = EpisodeRecorder(store)
    observation = {"state": np.zeros(19, np.float32)}
    frame_info = None if labels is None else {"success_label": False}
    recorder.start(observation, make_metadata(task="script", source="teleop"), frame_info)
    for step in range(STEPS):
        action = np.array([0.05, 0, 0, 0, 0, 0], np.float32)
        last = step == STEPS - 1
        recorder.add(action, float(success and last), observation, success and last, not success and last,
                     False, {"success": success and last},
                     None if labels is None else {"success_label": labels[step]})
    return directory


def franka_rl(*args: str, timeout_s: float = 240) -> subprocess.CompletedProcess:
    result = subprocess.run([FRANKA_RL, *args], capture_output=True, text=True, timeout=timeout_s, cwd=REPO_ROOT)
    print(result.stdout, result.stderr, sep="\n")
    return result


def test_record_demos_and_rewards_in_real_mode_through_the_actor_env_builder(peer, tmp_path):
    video = write_video(tmp_path / "wrist.avi", frames=900)
    overrides = real_overrides(peer, video)
    demo_script = script_episode(tmp_path / "script_demo", success=True)
    result = franka_rl("record-demos", "--config", str(REAL_CONFIG), "--successes", "1", "--out",
                       str(tmp_path / "demos"), "--device", "replay", f"teleop.replay_path={demo_script}", *overrides)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    (demo,) = EpisodeStore(tmp_path / "demos").episodes()
    assert demo.metadata["mode"] == "real" and demo.metadata["device"] == "replay"
    assert demo.success and len(demo) == STEPS  # the replayed success mark ended it
    assert demo.observations["wrist_1"].shape == (STEPS + 1, 32, 32, 3)
    np.testing.assert_allclose(demo.actions[:, 0], 0.05)  # the replayed actions are what was executed
    moved = demo.observations["state"][-1, :3] - demo.observations["state"][0, :3]
    assert np.linalg.norm(moved) > 1e-4  # the simulated arm really moved

    labels = [False, True, True, False]
    reward_script = script_episode(tmp_path / "script_rewards", success=False, labels=labels)
    result = franka_rl("record-rewards", "--config", str(REAL_CONFIG), "--out", str(tmp_path / "rewards"),
                       "--device", "replay", f"teleop.replay_path={reward_script}",
                       "record.reward_positives=2", "record.reward_negatives=2", *overrides)
    assert result.returncode == 0, result.stderr
    (frames,) = EpisodeStore(tmp_path / "rewards").episodes()
    assert frames.metadata["mode"] == "real"
    assert frames.frame_info["success_label"][1:].tolist()[: len(labels)] == labels[: len(frames)]


def test_the_actor_env_on_the_arm_is_built_by_the_same_function(peer, tmp_path):
    from franka_rl.assemble import build_env
    from franka_rl.config import load_config
    from teleop.intervention import InterventionWrapper

    video = write_video(tmp_path / "wrist.avi", frames=300)
    script = script_episode(tmp_path / "script", success=True)
    cfg = load_config(REAL_CONFIG, [*real_overrides(peer, video), "actor.intervention=true", "teleop.device=replay",
                                    f"teleop.replay_path={script}"])
    env = build_env(cfg, "actor")
    try:
        assert isinstance(env, InterventionWrapper)
        observation, _ = env.reset(seed=0)
        assert observation["wrist_1"].shape == (32, 32, 3)
        _, _, _, _, info = env.step(np.zeros(6, np.float32))
        assert info["intervened"] and info["executed_action"][0] == pytest.approx(0.05)
    finally:
        env.close()


def test_a_missing_camera_is_one_line_in_the_actor(peer, tmp_path):
    missing = tmp_path / "unplugged.avi"
    overrides = [*real_overrides(peer, missing), f"output_dir={tmp_path}", "transport.host=127.0.0.1",
                 "transport.bind_host=127.0.0.1", "transport.curve=false", "agent.encoder.pretrained_path=''"]
    result = franka_rl("actor", "--config", str(REAL_CONFIG), *overrides, timeout_s=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert "camera 'wrist_1'" in errors[0] and str(missing) in errors[0]
