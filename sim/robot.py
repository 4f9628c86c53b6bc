"""`SimRobot` and `SimClock`: the twin behind the `Robot` and `Clock` interfaces."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from robot_env.interfaces import ImpedanceParams, RobotError, RobotState
from sim.scene import FINGER_OPEN
from sim.world import N_ARM, SimWorld, xyzw_to_wxyz

# Blocking moves update their interpolated reference every this many physics steps.
_MOVE_CHUNK_STEPS = 5
# A blocking move has arrived when the TCP is this slow (m/s, rad/s) as well as within tolerance.
_SETTLED_LINEAR_SPEED = 0.01
_SETTLED_ANGULAR_SPEED = 0.05


class SimClock:
    """Sim time; `sleep_until` runs the physics (with the controller) up to the deadline."""

    def __init__(self, world: SimWorld):
        self.world = world

    def now(self) -> float:
        return float(self.world.data.time)

    def sleep_until(self, deadline: float) -> None:
        self.world.step_physics(self.world.steps_until(deadline))


class SimRobot:
    """The twin's arm: a torque-controlled Panda under a Cartesian impedance controller that
    behaves like the real compliant controller (see `sim.world.ImpedanceController`)."""

    def __init__(self, world: SimWorld):
        self.world = world
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise RobotError("the sim robot was closed; build a new env")
        if self.world.fault is not None:
            raise RobotError(f"{self.world.fault}; call recover()")

    def read_state(self) -> RobotState:
        world = self.world
        data = world.data
        position, quat = world.tcp_pose()
        return RobotState(
            timestamp=float(data.time),
            tcp_position=position,
            tcp_quat=quat,
            tcp_twist=world.tcp_twist(),
            wrench=world.tool_wrench(),
            joint_positions=data.qpos[:N_ARM].copy(),
            joint_velocities=data.qvel[:N_ARM].copy(),
            gripper_width=world.gripper_width(),
        )

    def set_target(self, position: np.ndarray, quat: np.ndarray) -> None:
        self._check()
        position = np.asarray(position, dtype=np.float64)
        quat = np.asarray(quat, dtype=np.float64)
        if (
            position.shape != (3,)
            or quat.shape != (4,)
            or not (np.all(np.isfinite(position)) and np.all(np.isfinite(quat)))
        ):
            raise ValueError(
                "set_target needs a finite (3,) position and (4,) x, y, z, w quaternion"
            )
        self.world.controller.set_reference(position, xyzw_to_wxyz(quat))

    def set_impedance(self, params: ImpedanceParams) -> None:
        self.world.controller.set_impedance(params)

    def move_to(self, position: np.ndarray, quat: np.ndarray, timeout_s: float = 10.0) -> None:
        """Move the reference along a straight line and a slerp at the configured speeds, then wait
        (in sim time) until the TCP has settled within tolerance. Uses the current impedance."""
        self._check()
        world, sim = self.world, self.world.sim
        goal_position = np.asarray(position, dtype=np.float64)
        goal_rotation = Rotation.from_quat(quat)
        start_position, start_quat = world.tcp_pose()
        start_rotation = Rotation.from_quat(start_quat)
        turn = (start_rotation.inv() * goal_rotation).as_rotvec()
        distance = float(np.linalg.norm(goal_position - start_position))
        angle = float(np.linalg.norm(turn))
        duration = max(distance / sim.move_speed, angle / sim.move_angular_speed, 0.05)
        dt = world.model.opt.timestep
        chunk = _MOVE_CHUNK_STEPS * dt
        started = world.data.time
        controller = world.controller
        elapsed = 0.0
        while True:
            elapsed = world.data.time - started
            fraction = min(1.0, (elapsed + chunk) / duration)
            reference = start_position + fraction * (goal_position - start_position)
            reference_rotation = start_rotation * Rotation.from_rotvec(fraction * turn)
            controller.set_reference(reference, xyzw_to_wxyz(reference_rotation.as_quat()))
            world.step_physics(_MOVE_CHUNK_STEPS)
            if world.fault is not None:
                raise RobotError(f"move_to stopped: {world.fault}; call recover()")
            if fraction >= 1.0 and self._settled(goal_position, goal_rotation):
                return
            if world.data.time - started > timeout_s:
                world.hold_position()
                tcp, _ = world.tcp_pose()
                raise RobotError(
                    f"move_to did not arrive within {timeout_s:.1f} s (sim time): TCP at "
                    f"{tcp.round(4).tolist()}, goal {goal_position.round(4).tolist()}"
                )

    def _settled(self, goal_position: np.ndarray, goal_rotation: Rotation) -> bool:
        world, sim = self.world, self.world.sim
        position, quat = world.tcp_pose()
        twist = world.tcp_twist()
        rotation_error = (goal_rotation.inv() * Rotation.from_quat(quat)).magnitude()
        return bool(
            np.linalg.norm(position - goal_position) <= sim.move_tolerance_m
            and rotation_error <= sim.move_tolerance_rad
            and np.linalg.norm(twist[:3]) <= _SETTLED_LINEAR_SPEED
            and np.linalg.norm(twist[3:]) <= _SETTLED_ANGULAR_SPEED
        )

    def joint_reset(self, timeout_s: float = 10.0) -> None:
        """Joint-space move to the home configuration (the IK solution of the nominal reset pose),
        interpolated at `sim.joint_reset_speed`, then back to Cartesian control holding there."""
        self._check()
        world = self.world
        controller = world.controller
        start = world.data.qpos[:N_ARM].copy()
        goal = world.q_home
        duration = max(float(np.max(np.abs(goal - start))) / world.sim.joint_reset_speed, 0.05)
        started = world.data.time
        controller.joint_mode = True
        try:
            while True:
                elapsed = world.data.time - started
                fraction = min(
                    1.0, (elapsed + _MOVE_CHUNK_STEPS * world.model.opt.timestep) / duration
                )
                controller.joint_reference[:] = start + fraction * (goal - start)
                world.step_physics(_MOVE_CHUNK_STEPS)
                if world.fault is not None:
                    raise RobotError(f"joint_reset stopped: {world.fault}; call recover()")
                q = world.data.qpos[:N_ARM]
                qd = world.data.qvel[:N_ARM]
                if (
                    fraction >= 1.0
                    and np.max(np.abs(q - goal)) < 0.01
                    and np.max(np.abs(qd)) < 0.05
                ):
                    return
                if world.data.time - started > timeout_s:
                    raise RobotError(
                        f"joint_reset did not arrive within {timeout_s:.1f} s (sim time)"
                    )
        finally:
            controller.joint_mode = False
            world.hold_position()

    def set_gripper(self, closed: bool) -> None:
        # Closing stops on the peg (the finger joints' lower limit is the peg's half side).
        self.world.gripper_target = 0.0 if closed else FINGER_OPEN
        self.world.data.ctrl[N_ARM:] = self.world.gripper_target

    def recover(self) -> None:
        if self.world.fault is not None:
            self.world.fault = None
            self.world.hold_position()

    def close(self) -> None:
        self._closed = True

    @property
    def home_joint_positions(self) -> np.ndarray:
        return self.world.q_home.copy()
