"""Import SERL / HIL-SERL transition pickles into an episode store.

SERL's and HIL-SERL's recording scripts pickle a list of transition dicts:
    {"observations": {...}, "actions": a, "next_observations": {...}, "rewards": r,
     "masks": 1 - terminated, "dones": episode ended, "infos": {...} (optional)}
with observation arrays that usually carry a leading history axis of length 1 (their chunking
wrapper).

State layout. SERL's Franka env observes a dict `state` {gripper_pose (1), tcp_force (3), tcp_pose
(7: xyz + x, y, z, w quaternion, or 6: xyz + extrinsic "xyz" Euler angles behind its
Quat2EulerWrapper), tcp_torque (3), tcp_vel (6: linear, angular)}, and its SERLObsWrapper
flattens that dict in gymnasium's sorted key order, which gives 20 numbers (19 with Euler). The
pose and velocity are in the robot base frame (without SERL's RelativeFrame wrapper), force and
torque are libfranka's O_F_ext_hat_K (base frame), and gripper_pose is the opening normalised by
the Franka Hand's 0.08 m. Ours is `robot_env.STATE_LAYOUT` in the task's nominal reset frame, so
`SerlStateMapping` (which needs that nominal pose) converts one into the other. RelativeFrame
data cannot be mapped: its velocity is a body twist through an adjoint of the absolute pose the
file does not hold, and its wrench is in the base frame whose orientation relative to the
episode's frame is unknown; the importer refuses it.

Loading a pickle executes whatever code the file contains: import only files you made
or trust, which is why the caller must say `trusted=True`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from agent.data.episodes import Episode, make_metadata
from agent.returns import split_episodes
from robot_env.errors import UserError
from robot_env.geometry import pose6_to_pos_quat, relative_pose

# gymnasium's Dict space sorts plain-dict keys, so SERL's flattened state runs in this order.
SERL_STATE_KEYS = ("gripper_pose", "tcp_force", "tcp_pose", "tcp_torque", "tcp_vel")
_SERL_SIZES = {"gripper_pose": 1, "tcp_force": 3, "tcp_torque": 3, "tcp_vel": 6}
# A Franka TCP cannot come this close to the base's origin: a pose there is relative to a reset
# pose (RelativeFrame), not in the base frame.
_MIN_BASE_DISTANCE_M = 0.1

PICKLE_WARNING = (
    "SERL transition files are Python pickles: loading one runs any code inside it. "
    "Import only files you recorded yourself or whose source you trust"
)


class SerlImportError(UserError, ValueError):
    """A SERL file that does not hold transitions in the expected layout."""


class SerlLayoutError(SerlImportError):
    """SERL's Franka state arrived without a mapping into STATE_LAYOUT (or --state-as-is)."""


@dataclass(frozen=True)
class SerlStateMapping:
    """How SERL's state becomes ours: the frame ours is relative to, and the gripper's scale.

    `nominal_pose` is the task's nominal reset pose as in config (`task.reset_pose`: base-frame
    position, then rotation vector), which is the frame of our `env.state_frame: nominal_reset`.
    """

    nominal_pose: Sequence[float]
    # Metres of opening per unit of SERL's gripper_pose: 0.08 for its normalised Franka Hand
    # reading; 1.0 if the recording's gripper server reported the width in metres.
    gripper_scale: float = 0.08

    def __post_init__(self):
        if len(self.nominal_pose) != 6 or not np.all(np.isfinite(self.nominal_pose)):
            raise SerlImportError(f"the nominal pose is 6 finite numbers (x, y, z, rx, ry, rz), got {list(self.nominal_pose)}")
        if not (np.isfinite(self.gripper_scale) and self.gripper_scale > 0):
            raise SerlImportError(f"the SERL gripper scale must be > 0, got {self.gripper_scale}")

    def convert(self, state: Any) -> np.ndarray:
        """SERL's state (its dict, or the flattened vector) as our 19-D STATE_LAYOUT vector."""
        parts = _serl_state_parts(state)
        pose = parts["tcp_pose"]
        position = pose[:3]
        rotation = Rotation.from_quat(pose[3:]) if len(pose) == 7 else Rotation.from_euler("xyz", pose[3:])
        if np.linalg.norm(position) < _MIN_BASE_DISTANCE_M:
            raise SerlImportError(
                f"SERL tcp_pose position {np.round(position, 3).tolist()} lies within {_MIN_BASE_DISTANCE_M} m of "
                "the robot base: this is RelativeFrame data (pose relative to each episode's reset), which "
                "cannot be mapped to our state (its velocities and wrench need the absolute pose); record "
                "without RelativeFrame or import with the state as is")
        frame_position, frame_quat = pose6_to_pos_quat(self.nominal_pose)
        frame_rotation = Rotation.from_quat(frame_quat)
        to_frame = frame_rotation.inv()
        ours_position, ours_rotvec = relative_pose(frame_position, frame_rotation, position, rotation)
        vel = parts["tcp_vel"]
        return np.concatenate([
            ours_position, ours_rotvec,
            to_frame.apply(vel[:3]), to_frame.apply(vel[3:]),
            to_frame.apply(parts["tcp_force"]), to_frame.apply(parts["tcp_torque"]),
            parts["gripper_pose"] * self.gripper_scale,
        ]).astype(np.float32)


def _is_serl_state(state: Any) -> bool:
    if isinstance(state, Mapping):
        return set(SERL_STATE_KEYS) <= set(state)
    return _squeeze_history(state).reshape(-1).shape[0] in (19, 20)


def _serl_state_parts(state: Any) -> dict[str, np.ndarray]:
    if isinstance(state, Mapping):
        missing = [k for k in SERL_STATE_KEYS if k not in state]
        if missing:
            raise SerlImportError(f"SERL state dict lacks {missing} (has {sorted(state)})")
        parts = {k: _squeeze_history(state[k]).astype(np.float64).reshape(-1) for k in SERL_STATE_KEYS}
    else:
        flat = _squeeze_history(state).astype(np.float64).reshape(-1)
        if flat.shape[0] not in (19, 20):
            raise SerlImportError(
                f"a flattened SERL state has 20 numbers (tcp_pose with a quaternion) or 19 (Euler angles), "
                f"got {flat.shape[0]}")
        sizes = {**_SERL_SIZES, "tcp_pose": flat.shape[0] - 13}
        parts, start = {}, 0
        for key in SERL_STATE_KEYS:
            parts[key] = flat[start:start + sizes[key]]
            start += sizes[key]
    for key, size in {**_SERL_SIZES, "tcp_pose": len(parts["tcp_pose"])}.items():
        if len(parts[key]) != size or (key == "tcp_pose" and size not in (6, 7)):
            raise SerlImportError(f"SERL state '{key}' has {len(parts[key])} numbers, expected {size if key != 'tcp_pose' else '7 or 6'}")
    return parts


def load_serl_pickle(path: str | os.PathLike, *, trusted: bool) -> list[dict[str, Any]]:
    """Unpickle a SERL transition list. Refuses unless `trusted` (see PICKLE_WARNING)."""
    if not trusted:
        raise PermissionError(PICKLE_WARNING + f"; refusing to load {path} without trusted=True")
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = pickle.load(handle)  # noqa: S301 - trusted by the caller, see PICKLE_WARNING
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as exc:
        raise SerlImportError(f"{path} is not a readable pickle ({type(exc).__name__}: {exc})") from None
    if isinstance(data, Mapping) and "observations" in data:
        data = _columns_to_rows(data)
    if not isinstance(data, Sequence) or not data or not isinstance(data[0], Mapping):
        raise SerlImportError(f"{path} does not hold a list of transition dicts")
    return list(data)


def _columns_to_rows(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A dict of stacked arrays (a saved buffer) as a list of transitions."""
    def row(tree, i):
        return {k: row(v, i) for k, v in tree.items()} if isinstance(tree, Mapping) else tree[i]

    count = len(np.asarray(data["rewards"]))
    return [row(data, i) for i in range(count)]


def _squeeze_history(value: Any) -> np.ndarray:
    value = np.asarray(value)
    if value.ndim >= 2 and value.shape[0] == 1:
        return value[0]
    return value


def _observation(obs: Any, rename: Mapping[str, str], mapping: SerlStateMapping | None,
                 state_as_is: bool) -> dict[str, np.ndarray]:
    if not isinstance(obs, Mapping) or set(SERL_STATE_KEYS) <= set(obs):
        obs = {"state": obs}
    if isinstance(obs.get("images"), Mapping):  # SERL's env without SERLObsWrapper nests its cameras
        obs = {**{k: v for k, v in obs.items() if k != "images"}, **obs["images"]}
    out = {}
    for key, value in obs.items():
        if key == "state" and not state_as_is and _is_serl_state(value):
            if mapping is None:
                raise SerlLayoutError(
                    "the file holds SERL's Franka state (its dict, or flattened to 19/20 numbers in sorted-key "
                    "order), which is not our STATE_LAYOUT: give the task's nominal reset pose to map it "
                    "(--nominal-pose or --config), or keep it as is (--state-as-is) if it already is ours")
            value = mapping.convert(value)
        elif isinstance(value, Mapping):
            raise SerlImportError(f"observation '{key}' is a dict ({sorted(value)}) that is not SERL's state")
        value = _squeeze_history(value)
        if value.dtype != np.uint8:
            value = value.astype(np.float32)
        out[rename.get(key, key)] = value
    return out


def serl_transitions_to_episodes(
    transitions: Sequence[Mapping[str, Any]],
    *,
    rename: Mapping[str, str] | None = None,
    task: str = "imported",
    origin: str = "",
    state_mapping: SerlStateMapping | None = None,
    state_as_is: bool = False,
) -> list[Episode]:
    """Group transitions into episodes on `dones`, terminations and discontinuities.

    A SERL Franka state is converted with `state_mapping` and refused without one, unless
    `state_as_is` (a file that already holds our layout); any other state is kept as it is."""
    rename = dict(rename or {})
    required = ("observations", "actions", "next_observations", "rewards")
    for i, transition in enumerate(transitions):
        missing = [k for k in required if k not in transition]
        if missing or ("masks" not in transition and "dones" not in transition):
            raise SerlImportError(f"transition {i} lacks {missing or ['masks/dones']}")
    obs = [_observation(t["observations"], rename, state_mapping, state_as_is) for t in transitions]
    next_obs = [_observation(t["next_observations"], rename, state_mapping, state_as_is) for t in transitions]
    actions = np.stack([np.asarray(t["actions"], np.float32).reshape(-1) for t in transitions])
    rewards = np.array([float(np.asarray(t["rewards"]).reshape(-1)[0]) for t in transitions], np.float32)
    dones = np.array([bool(np.asarray(t.get("dones", False)).reshape(-1)[0]) for t in transitions])
    if "masks" in transitions[0]:
        terminated = np.array([float(np.asarray(t["masks"]).reshape(-1)[0]) == 0.0 for t in transitions])
    else:
        terminated = dones.copy()
    truncated = dones & ~terminated
    intervened = np.array([isinstance(t.get("infos"), Mapping) and "intervene_action" in t["infos"]
                           for t in transitions])
    gap = np.zeros(len(transitions), bool)
    for t in range(len(transitions) - 1):
        gap[t] = not all(np.array_equal(next_obs[t][k], obs[t + 1].get(k)) for k in next_obs[t])
    episodes = []
    for index, piece in enumerate(split_episodes(terminated, truncated, gap, keep_incomplete=True)):
        steps = range(piece.start, piece.stop)
        ep_truncated = truncated[piece].copy()
        if not (terminated[piece][-1] or ep_truncated[-1]):
            ep_truncated[-1] = True  # ends on a discontinuity or the end of the file
        observations = {k: np.stack([obs[t][k] for t in steps] + [next_obs[piece.stop - 1][k]]) for k in obs[piece.start]}
        episodes.append(Episode(
            observations=observations,
            actions=actions[piece],
            rewards=rewards[piece],
            terminated=terminated[piece],
            truncated=ep_truncated,
            intervened=intervened[piece],
            metadata=make_metadata(task=task, source="imported", original_format="serl-transitions",
                                   imported_from=origin, imported_episode=index),
            info={"success": rewards[piece] > 0},
        ))
    return episodes
