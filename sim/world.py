"""The simulated cell: one MuJoCo model and data, the impedance controller that runs at every
physics step, ground truth, and per-episode scene randomisation.

`SimRobot`, `SimClock` and `SimCamera` are thin views on one `SimWorld`; they share its time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import mujoco
import numpy as np
from scipy.spatial.transform import Rotation

from robot_env.config import TaskConfig
from robot_env.geometry import pose6_to_pos_quat
from robot_env.interfaces import ImpedanceParams
from sim.config import SimConfig
from sim.scene import (
    JOINT_LIMITS,
    OVERVIEW_CAMERA,
    WRIST_CAMERAS,
    FixtureGeometry,
    fixture_geometry,
    scene_xml,
)

N_ARM = 7


def xyzw_to_wxyz(quat: np.ndarray) -> np.ndarray:
    return np.array([quat[3], quat[0], quat[1], quat[2]], dtype=np.float64)


def wxyz_to_xyzw(quat: np.ndarray) -> np.ndarray:
    return np.array([quat[1], quat[2], quat[3], quat[0]], dtype=np.float64)


@dataclass(frozen=True)
class GroundTruth:
    """Where the peg is relative to the hole, in the hole's frame (z up along the hole axis)."""

    insertion_depth: float  # peg tip below the rim (m); negative above it
    lateral_offset: np.ndarray  # (2,) peg tip from the hole axis (m)
    yaw_error: float  # peg yaw from the nearest square-aligned yaw (rad)
    inside: bool  # tip within the hole's cross-section

    def success(self, success_depth: float) -> bool:
        return self.inside and self.insertion_depth >= success_depth


class ImpedanceController:
    """Torques of a Cartesian impedance controller, like the real arm's compliant controller:

        τ = Jᵀ(−K·e − D·ẋ) + bias(q, q̇) + N·(k_n·(q_home − q) − d_n·q̇)

    with e the pose error to the reference, clipped in norm to `max_reference_offset_*` (this
    bounds the static contact force at K·offset), D = 2·ratio·√K (critical for unit mass, franky's
    convention), bias MuJoCo's gravity + Coriolis, and N the null-space projector of Jᵀ. A
    joint-space mode drives the arm to a joint reference instead (for `joint_reset`).

    Everything works in preallocated arrays: it runs once per physics step.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        data: mujoco.MjData,
        tcp_site: int,
        q_home: np.ndarray,
        null_stiffness: float,
    ):
        self.model, self.data, self.site = model, data, tcp_site
        self.jac = np.zeros((6, model.nv))
        self.q_home = q_home.copy()
        self.null_stiffness = null_stiffness
        self.null_damping = 2.0 * math.sqrt(null_stiffness)
        self.stiffness = np.zeros(6)
        self.damping = np.zeros(6)
        self.max_offset_m = 0.0
        self.max_offset_rad = 0.0
        self.ref_position = np.zeros(3)
        self.ref_quat = np.array([1.0, 0.0, 0.0, 0.0])  # w, x, y, z
        self.ref_matrix = np.eye(3)
        self.joint_mode = False
        self.joint_reference = q_home.copy()
        self.joint_stiffness = np.array([600.0, 600.0, 600.0, 600.0, 250.0, 150.0, 50.0])
        self.joint_damping = 2.0 * np.sqrt(self.joint_stiffness)
        self._quat = np.zeros(4)
        self._mat9 = np.zeros(9)
        self._rot_error_local = np.zeros(3)
        self._regulariser = 1e-6 * np.eye(6)
        self._gram = np.zeros((6, 6))
        self._task_space = np.zeros(6)

    def set_impedance(self, params: ImpedanceParams) -> None:
        k_t, k_r = params.translational_stiffness, params.rotational_stiffness
        if k_t < 0 or k_r < 0 or params.damping_ratio < 0:
            raise ValueError("impedance stiffness and damping ratio must be non-negative")
        self.stiffness[:] = (k_t, k_t, k_t, k_r, k_r, k_r)
        self.damping[:] = 2.0 * params.damping_ratio * np.sqrt(self.stiffness)
        self.max_offset_m = params.max_reference_offset_m
        self.max_offset_rad = params.max_reference_offset_rad

    def set_reference(self, position: np.ndarray, quat_wxyz: np.ndarray) -> None:
        self.ref_position[:] = position
        self.ref_quat[:] = quat_wxyz / np.linalg.norm(quat_wxyz)
        mujoco.mju_quat2Mat(self._mat9, self.ref_quat)
        self.ref_matrix[:] = self._mat9.reshape(3, 3)
        self.joint_mode = False

    def pose_error(self) -> tuple[np.ndarray, np.ndarray]:
        """Unclipped (position, rotation-vector) error of the TCP to the reference, base frame."""
        data = self.data
        position_error = data.site_xpos[self.site] - self.ref_position
        mujoco.mju_mat2Quat(self._quat, data.site_xmat[self.site])
        # Local rotation from the reference to the TCP, then expressed in the base frame.
        mujoco.mju_subQuat(self._rot_error_local, self._quat, self.ref_quat)
        return position_error, self.ref_matrix @ self._rot_error_local

    def apply(self) -> None:
        """Write the arm torques into `data.ctrl` for the current state (after mj_step1)."""
        model, data = self.model, self.data
        q = data.qpos[:N_ARM]
        qd = data.qvel[:N_ARM]
        if self.joint_mode:
            torque = self.joint_stiffness * (self.joint_reference - q) - self.joint_damping * qd
            data.ctrl[:N_ARM] = torque + data.qfrc_bias[:N_ARM]
            return
        jac = self.jac
        mujoco.mj_jacSite(model, data, jac[:3], jac[3:], self.site)
        arm_jac = jac[:, :N_ARM]
        position_error, rotation_error = self.pose_error()
        norm = math.sqrt(position_error @ position_error)
        if norm > self.max_offset_m:
            position_error *= self.max_offset_m / norm
        norm = math.sqrt(rotation_error @ rotation_error)
        if norm > self.max_offset_rad:
            rotation_error *= self.max_offset_rad / norm
        velocity = arm_jac @ qd
        wrench = -self.damping * velocity
        wrench[:3] -= self.stiffness[:3] * position_error
        wrench[3:] -= self.stiffness[3:] * rotation_error
        torque = arm_jac.T @ wrench
        # Null-space posture: project out anything that would move the TCP (Jᵀ pinv(Jᵀ)).
        posture = self.null_stiffness * (self.q_home - q) - self.null_damping * qd
        # (J Jᵀ)⁻¹ J·posture by a 6×6 Cholesky solve: no matrix inverse, no allocation-heavy solve.
        gram = self._gram
        np.matmul(arm_jac, arm_jac.T, out=gram)
        gram += self._regulariser
        mujoco.mju_cholFactor(gram, 0.0)
        mujoco.mju_cholSolve(self._task_space, gram, arm_jac @ posture)
        torque += posture - arm_jac.T @ self._task_space
        data.ctrl[:N_ARM] = torque + data.qfrc_bias[:N_ARM]


class SimWorld:
    """The MuJoCo model and data of the cell and everything that advances them."""

    def __init__(
        self,
        task: TaskConfig,
        sim: SimConfig,
        real_time: bool = False,
        offscreen_size: tuple[int, int] = (640, 480),
    ):
        self.task = task
        self.sim = sim
        self.real_time = real_time
        self.fixture: FixtureGeometry = fixture_geometry(task, sim)
        self.model = mujoco.MjModel.from_xml_string(scene_xml(task, sim, offscreen_size))
        self.data = mujoco.MjData(self.model)
        model = self.model
        name2id = mujoco.mj_name2id
        self.tcp_site = name2id(model, mujoco.mjtObj.mjOBJ_SITE, "tcp")
        self.peg_tip_site = name2id(model, mujoco.mjtObj.mjOBJ_SITE, "peg_tip")
        self.hole_top_site = name2id(model, mujoco.mjtObj.mjOBJ_SITE, "hole_top")
        self.fixture_body = name2id(model, mujoco.mjtObj.mjOBJ_BODY, "fixture")
        self.tool_bodies = frozenset(
            name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)
            for name in ("hand", "finger_left", "finger_right")
        )
        self.tool_geom_mask = np.isin(model.geom_bodyid, list(self.tool_bodies))
        self.camera_ids = {
            name: name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name)
            for name in (*WRIST_CAMERAS, OVERVIEW_CAMERA)
        }
        self.finger_qpos = slice(N_ARM, N_ARM + 2)
        # Nominal values that domain randomisation perturbs around.
        self.nominal_fixture_pos = model.body_pos[self.fixture_body].copy()
        self.nominal_fixture_quat = model.body_quat[self.fixture_body].copy()
        self.nominal_light_diffuse = model.light_diffuse.copy()
        self.nominal_mat_rgba = model.mat_rgba.copy()
        self.nominal_cam_pos = model.cam_pos.copy()
        self.nominal_cam_quat = model.cam_quat.copy()
        self.randomised_materials = [
            name2id(model, mujoco.mjtObj.mjOBJ_MATERIAL, name)
            for name in ("table", "fixture", "hole", "peg")
        ]

        reset_position, reset_quat = pose6_to_pos_quat(task.reset_pose)
        self.q_home = self.inverse_kinematics(reset_position, reset_quat)
        self.controller = ImpedanceController(
            model, self.data, self.tcp_site, self.q_home, sim.null_space_stiffness
        )
        self.gripper_target = 0.0
        self.fault: str | None = None
        # Real-time pacing: wall time that corresponds to sim time `_anchor_sim`.
        self._anchor_wall: float | None = None
        self._anchor_sim = 0.0
        self.reset_arm()

    # ------------------------------------------------------------------ kinematics

    def inverse_kinematics(
        self, position: np.ndarray, quat_xyzw: np.ndarray, iterations: int = 300
    ) -> np.ndarray:
        """Joint angles that put the TCP at the pose (damped least squares from a bent, elbow-up
        seed, with a light pull towards mid-range), checked against the joint limits."""
        model = self.model
        scratch = mujoco.MjData(model)
        q = np.array([0.0, 0.0, 0.0, -2.0, 0.0, 2.0, math.pi / 4])
        low = np.array([lim[0] for lim in JOINT_LIMITS])
        high = np.array([lim[1] for lim in JOINT_LIMITS])
        target_quat = xyzw_to_wxyz(quat_xyzw)
        jac = np.zeros((6, model.nv))
        current = np.zeros(4)
        error = np.zeros(6)
        for _ in range(iterations):
            scratch.qpos[:N_ARM] = q
            mujoco.mj_kinematics(model, scratch)
            mujoco.mj_comPos(model, scratch)
            error[:3] = position - scratch.site_xpos[self.tcp_site]
            mujoco.mju_mat2Quat(current, scratch.site_xmat[self.tcp_site])
            local = np.zeros(3)
            mujoco.mju_subQuat(local, target_quat, current)
            error[3:] = scratch.site_xmat[self.tcp_site].reshape(3, 3) @ local
            if np.linalg.norm(error[:3]) < 1e-6 and np.linalg.norm(error[3:]) < 1e-5:
                break
            mujoco.mj_jacSite(model, scratch, jac[:3], jac[3:], self.tcp_site)
            arm = jac[:, :N_ARM]
            step = arm.T @ np.linalg.solve(arm @ arm.T + 1e-4 * np.eye(6), error)
            q = np.clip(q + step, low, high)
        else:
            raise ValueError(
                f"no joint configuration reaches the TCP pose {position.round(3).tolist()} "
                "(task.reset_pose out of the arm's reach?)"
            )
        return q

    # ------------------------------------------------------------------ stepping

    def reset_arm(self) -> None:
        """Physics state back to rest at the home configuration; sim time keeps running on."""
        elapsed = self.data.time
        mujoco.mj_resetData(self.model, self.data)
        self.data.time = elapsed
        self.data.qpos[:N_ARM] = self.q_home
        self.data.qpos[self.finger_qpos] = self.model.jnt_range[N_ARM : N_ARM + 2, 0]
        self.gripper_target = 0.0
        self.data.ctrl[N_ARM:] = self.gripper_target
        mujoco.mj_forward(self.model, self.data)
        position = self.data.site_xpos[self.tcp_site].copy()
        quat = np.zeros(4)
        mujoco.mju_mat2Quat(quat, self.data.site_xmat[self.tcp_site])
        self.controller.set_reference(position, quat)
        self.fault = None

    def step_physics(self, steps: int) -> None:
        """`steps` physics steps with the controller in the loop, then fresh derived quantities."""
        model, data, control = self.model, self.data, self.controller.apply
        data.ctrl[N_ARM:] = self.gripper_target
        for _ in range(steps):
            mujoco.mj_step1(model, data)
            control()
            mujoco.mj_step2(model, data)
        # Positions, contacts and contact forces for the state that readers will see.
        mujoco.mj_forward(model, data)
        if self.real_time:
            self._pace()
        self._check_reflex()

    def steps_until(self, deadline: float) -> int:
        return max(0, int(round((deadline - self.data.time) / self.model.opt.timestep)))

    def _pace(self) -> None:
        """Sleep so that sim time does not run ahead of wall time."""
        now = time.monotonic()
        if (
            self._anchor_wall is None
            or now - self._anchor_wall > self.data.time - self._anchor_sim + 0.5
        ):
            # First call, or more than half a second behind: restart the schedule from here.
            self._anchor_wall, self._anchor_sim = now, self.data.time
            return
        ahead = (self.data.time - self._anchor_sim) - (now - self._anchor_wall)
        if ahead > 0:
            time.sleep(ahead)

    def _check_reflex(self) -> None:
        if self.fault is None:
            force = self.tool_wrench()[:3]
            magnitude = float(np.linalg.norm(force))
            if magnitude > self.sim.reflex_force:
                self.fault = f"reflex: contact force {magnitude:.0f} N exceeded sim.reflex_force={self.sim.reflex_force:.0f} N"
                self.hold_position()

    def hold_position(self) -> None:
        """Make the current pose the reference (as the real arm does when it stops)."""
        quat = np.zeros(4)
        mujoco.mju_mat2Quat(quat, self.data.site_xmat[self.tcp_site])
        self.controller.set_reference(self.data.site_xpos[self.tcp_site].copy(), quat)

    # ------------------------------------------------------------------ readings

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """TCP position and x, y, z, w quaternion."""
        quat = np.zeros(4)
        mujoco.mju_mat2Quat(quat, self.data.site_xmat[self.tcp_site])
        return self.data.site_xpos[self.tcp_site].copy(), wxyz_to_xyzw(quat)

    def tcp_twist(self) -> np.ndarray:
        jac = np.zeros((6, self.model.nv))
        mujoco.mj_jacSite(self.model, self.data, jac[:3], jac[3:], self.tcp_site)
        return jac @ self.data.qvel

    def tool_wrench(self) -> np.ndarray:
        """Force and torque (about the TCP) that the world's contacts exert on the hand, fingers
        and peg, base frame."""
        data = self.data
        wrench = np.zeros(6)
        if data.ncon == 0:
            return wrench
        tcp = data.site_xpos[self.tcp_site]
        contact_force = np.zeros(6)
        geoms = data.contact.geom
        frames = data.contact.frame
        positions = data.contact.pos
        for i in range(data.ncon):
            on_first = self.tool_geom_mask[geoms[i, 0]]
            on_second = self.tool_geom_mask[geoms[i, 1]]
            if on_first == on_second:
                continue
            mujoco.mj_contactForce(self.model, data, i, contact_force)
            # The contact frame's rows are its axes; the force acts on geom2 along +normal.
            force = frames[i].reshape(3, 3).T @ contact_force[:3]
            if on_first:
                force = -force
            wrench[:3] += force
            wrench[3:] += np.cross(positions[i] - tcp, force)
        return wrench

    def gripper_width(self) -> float:
        return float(self.data.qpos[N_ARM] + self.data.qpos[N_ARM + 1])

    def ground_truth(self) -> GroundTruth:
        data = self.data
        hole_rotation = data.xmat[self.fixture_body].reshape(3, 3)
        local = hole_rotation.T @ (
            data.site_xpos[self.peg_tip_site] - data.site_xpos[self.hole_top_site]
        )
        peg_x = data.site_xmat[self.tcp_site].reshape(3, 3)[:, 0]
        peg_x_local = hole_rotation.T @ peg_x
        yaw = math.atan2(peg_x_local[1], peg_x_local[0])
        # A square peg fits at any multiple of 90°.
        yaw_error = (yaw + math.pi / 4) % (math.pi / 2) - math.pi / 4
        limit = self.fixture.hole_half_width
        return GroundTruth(
            insertion_depth=float(-local[2]),
            lateral_offset=local[:2].copy(),
            yaw_error=float(yaw_error),
            inside=bool(abs(local[0]) <= limit and abs(local[1]) <= limit),
        )

    def hole_pose(self) -> tuple[np.ndarray, float]:
        """Privileged: the hole's rim centre (m) and the fixture's yaw (rad), base frame."""
        rotation = self.data.xmat[self.fixture_body].reshape(3, 3)
        return self.data.site_xpos[self.hole_top_site].copy(), math.atan2(
            rotation[1, 0], rotation[0, 0]
        )

    # ------------------------------------------------------------------ randomisation

    def randomise(self, rng: np.random.Generator) -> None:
        """Apply `sim.randomization` around the nominal scene; draws only for the keys that are on."""
        dr = self.sim.randomization
        model = self.model
        model.body_pos[self.fixture_body] = self.nominal_fixture_pos
        model.body_quat[self.fixture_body] = self.nominal_fixture_quat
        if dr.fixture_position_noise > 0:
            model.body_pos[self.fixture_body, :2] += rng.uniform(
                -dr.fixture_position_noise, dr.fixture_position_noise, 2
            )
        if dr.fixture_yaw_noise > 0:
            yaw = rng.uniform(-dr.fixture_yaw_noise, dr.fixture_yaw_noise)
            turned = Rotation.from_rotvec([0.0, 0.0, yaw]) * Rotation.from_quat(
                wxyz_to_xyzw(self.nominal_fixture_quat)
            )
            model.body_quat[self.fixture_body] = xyzw_to_wxyz(turned.as_quat())
        model.light_diffuse[:] = self.nominal_light_diffuse
        if dr.lighting > 0:
            scale = rng.uniform(1 - dr.lighting, 1 + dr.lighting, (model.nlight, 1))
            model.light_diffuse[:] = np.clip(self.nominal_light_diffuse * scale, 0.0, 1.0)
        model.mat_rgba[:] = self.nominal_mat_rgba
        if dr.colors > 0:
            for material in self.randomised_materials:
                shift = rng.uniform(-dr.colors, dr.colors, 3)
                model.mat_rgba[material, :3] = np.clip(
                    self.nominal_mat_rgba[material, :3] + shift, 0.0, 1.0
                )
        model.cam_pos[:] = self.nominal_cam_pos
        model.cam_quat[:] = self.nominal_cam_quat
        for name in WRIST_CAMERAS:
            camera = self.camera_ids[name]
            if dr.camera_position_jitter > 0:
                model.cam_pos[camera] += rng.uniform(
                    -dr.camera_position_jitter, dr.camera_position_jitter, 3
                )
            if dr.camera_rotation_jitter > 0:
                turn = Rotation.from_rotvec(
                    rng.uniform(-dr.camera_rotation_jitter, dr.camera_rotation_jitter, 3)
                )
                jittered = Rotation.from_quat(wxyz_to_xyzw(self.nominal_cam_quat[camera])) * turn
                model.cam_quat[camera] = xyzw_to_wxyz(jittered.as_quat())
        mujoco.mj_forward(model, self.data)
