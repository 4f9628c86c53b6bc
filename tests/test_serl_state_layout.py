"""SERL's Franka state (its dict, flattened with a quaternion or with Euler angles) is mapped into
our STATE_LAYOUT in the task's nominal reset frame, index by index; what cannot be mapped is
refused with one line."""

import math
import pickle

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from agent.data.episodes import EpisodeStore
from agent.data.serl import SerlImportError, SerlStateMapping, serl_transitions_to_episodes
from franka_rl.cli import main
from franka_rl.config import CONFIG_DIR
from robot_env import STATE_DIM, STATE_LAYOUT

# The default task's nominal reset pose: peg pointing down (roll π), 16 cm above the table.
NOMINAL = [0.55, 0.0, 0.16, math.pi, 0.0, 0.0]
GRIPPER_NORMALISED = 0.25  # SERL's gripper_pose: opening / 0.08 m


def serl_state(step):
    """SERL's state dict for a TCP 1 cm higher per step than the nominal pose, yawed 0.1 rad, with
    base-frame velocity, force and torque along the base axes."""
    position = np.array([0.56, -0.02, 0.16 + 0.01 * step])
    rotation = Rotation.from_rotvec([math.pi, 0, 0]) * Rotation.from_rotvec([0, 0, 0.1])
    return {
        "tcp_pose": np.concatenate([position, rotation.as_quat()]),  # xyz + x, y, z, w
        "tcp_vel": np.array([0.1, 0.2, 0.3, 0.01, 0.02, 0.03]),  # base frame: linear, angular
        "gripper_pose": np.array([GRIPPER_NORMALISED]),
        "tcp_force": np.array([1.0, 2.0, 5.0]),  # base frame
        "tcp_torque": np.array([0.1, 0.2, 0.5]),
    }


def flatten(state, euler=False):
    """SERLObsWrapper's flatten: gymnasium's Dict sorts its keys, so the vector is in key order."""
    state = dict(state)
    if euler:  # Quat2EulerWrapper
        pose = state["tcp_pose"]
        state["tcp_pose"] = np.concatenate([pose[:3], Rotation.from_quat(pose[3:]).as_euler("xyz")])
    return np.concatenate([np.asarray(state[k], np.float32) for k in sorted(state)])


def transitions(layout, steps=3):
    def obs(t):
        state = serl_state(t)
        frame = np.full((4, 4, 3), t, np.uint8)
        if layout == "dict":  # SERL's env without SERLObsWrapper, history axis from chunking
            return {"state": {k: v[None] for k, v in state.items()}, "images": {"wrist_1": frame[None]}}
        return {"state": flatten(state, euler=layout == "euler")[None], "wrist_1": frame[None]}

    return [{"observations": obs(t), "actions": np.zeros(7, np.float32), "next_observations": obs(t + 1),
             "rewards": float(t == steps - 1), "masks": 0.0 if t == steps - 1 else 1.0, "dones": t == steps - 1}
            for t in range(steps)]


@pytest.mark.parametrize("layout", ["dict", "quat", "euler"])
def test_serl_state_maps_index_by_index(layout):
    assert flatten(serl_state(0)).shape == (20,) and flatten(serl_state(0), euler=True).shape == (19,)
    [episode] = serl_transitions_to_episodes(transitions(layout), state_mapping=SerlStateMapping(NOMINAL))
    state = episode.observations["state"]
    assert state.shape == (4, STATE_DIM)
    ours = {key: state[:, index] for key, index in STATE_LAYOUT.items()}
    # The nominal frame points down (roll π about base x): its y and z axes are base -y and -z.
    np.testing.assert_allclose(ours["tcp_position"][0], [0.01, 0.02, 0.0], atol=1e-6)
    np.testing.assert_allclose(ours["tcp_position"][:, 2], [0.0, -0.01, -0.02, -0.03], atol=1e-6)
    np.testing.assert_allclose(ours["tcp_rotvec"], np.tile([0, 0, 0.1], (4, 1)), atol=1e-6)
    np.testing.assert_allclose(ours["tcp_linear_velocity"][0], [0.1, -0.2, -0.3], atol=1e-6)
    np.testing.assert_allclose(ours["tcp_angular_velocity"][0], [0.01, -0.02, -0.03], atol=1e-6)
    np.testing.assert_allclose(ours["force"][0], [1.0, -2.0, -5.0], atol=1e-6)
    np.testing.assert_allclose(ours["torque"][0], [0.1, -0.2, -0.5], atol=1e-6)
    np.testing.assert_allclose(ours["gripper_width"][:, 0], GRIPPER_NORMALISED * 0.08, atol=1e-7)
    assert episode.observations["wrist_1"].shape == (4, 4, 4, 3) and episode.observations["wrist_1"][3, 0, 0, 0] == 3


@pytest.mark.parametrize("layout", ["dict", "quat", "euler"])
def test_serl_state_without_a_nominal_pose_is_refused(layout):
    with pytest.raises(SerlImportError, match="not our STATE_LAYOUT.*nominal reset pose"):
        serl_transitions_to_episodes(transitions(layout))


def test_relative_frame_data_is_refused_and_as_is_keeps_the_vector():
    relative = transitions("quat")
    for t in relative:
        for obs in (t["observations"], t["next_observations"]):
            obs["state"][0, 4:7] -= [0.55, 0.0, 0.16]  # RelativeFrame: pose relative to the reset
    with pytest.raises(SerlImportError, match="RelativeFrame"):
        serl_transitions_to_episodes(relative, state_mapping=SerlStateMapping(NOMINAL))
    ours = transitions("euler")  # 19 numbers a user says are already ours
    [episode] = serl_transitions_to_episodes(ours, state_as_is=True)
    np.testing.assert_array_equal(episode.observations["state"][0], ours[0]["observations"]["state"][0])


def test_import_serl_command_maps_with_the_configs_nominal_pose(tmp_path, capsys):
    path = tmp_path / "serl.pkl"
    path.write_bytes(pickle.dumps(transitions("quat")))
    out = tmp_path / "eps"
    assert main(["dataset", "import-serl", str(path), "--out", str(out), "--trust-pickle"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--nominal-pose" in err[0] and not out.exists()
    assert main(["dataset", "import-serl", str(path), "--out", str(out), "--trust-pickle",
                 "--config", str(CONFIG_DIR / "peg_insertion_sim.yaml")]) == 0
    [episode] = EpisodeStore(out).episodes()
    np.testing.assert_allclose(episode.observations["state"][1, STATE_LAYOUT["tcp_position"]], [0.01, 0.02, -0.01],
                               atol=1e-6)
