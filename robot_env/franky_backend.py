"""The real arm: a `Robot` over franky (libfranka).

Control modes:
- **Compliant tracking** (`set_target`): franky's `CartesianImpedanceTracker`, a torque controller
  running at 1 kHz inside libfranka's thread, whose reference we move once per env step. Its error
  clip (`ImpedanceParams.max_reference_offset_*`) bounds how far the reference may run ahead of
  the measured pose, so the contact force stays below stiffness × clip.
- **Blocking moves** (`move_to`, `joint_reset`, the post-recovery lift): franky's planned Cartesian
  or joint motions on the arm's own controller, scaled by `real.relative_dynamics_factor`: precise
  to a fraction of a millimetre, with libfranka's collision reflex armed.

Safety inside the backend (the env has already clipped the target into the safety box):
- every compliant target is pulled to within `max_step_translation_m` / `max_step_rotation_rad`
  of the measured pose, and clipped into the box again;
- an external force or torque above the soft limit makes the backend retreat along the force,
  stop, and raise `RobotError`; libfranka's collision reflex (higher thresholds) stays the hard
  limit;
- a reflex or communication fault surfaces as `RobotError` at the next command; `recover()`
  reconnects if the link dropped, clears the fault and lifts the TCP clear. Every wait is bounded.
Ctrl-C during a blocking move stops the arm before the KeyboardInterrupt propagates; `close()`
brings a running tracker to rest.

franky is imported when a `FrankyRobot` is built, so the rest of the package works without it.
"""

from __future__ import annotations

import signal
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from robot_env.config import EnvConfig
from robot_env.interfaces import ImpedanceParams, RecoveryRefused, RobotError, RobotState
from robot_env.real_config import RealConfig, validate_real_config
from robot_env.safety import SafetyBox
from robot_env.safety_monitor import backoff_position, check_wrench, limit_step

_JOINT_RESET_TIMEOUT_S = 60.0
_RECOVERY_MOVE_TIMEOUT_S = 15.0
_BACKOFF_TIMEOUT_S = 1.0
_JOIN_POLL_S = 0.05


class RobotConnectionError(RobotError):
    """The arm or its hand cannot be reached, or refuses the connection."""


def import_franky() -> Any:
    """Import franky, or say how to install it."""
    try:
        import franky
    except ImportError:
        raise RobotConnectionError(
            "franky is not installed. FR3: pip install 'franka-rl[real]'. Panda: install the franky "
            "build for libfranka 0.9.2 (see docs/hardware.md, 'Panda or FR3')."
        ) from None
    return franky


def software_versions() -> dict[str, str]:
    """Versions of franky and of the libfranka it was built against (the arm's firmware must
    match the libfranka version: see docs/hardware.md)."""
    versions = {"franky": "not installed", "libfranka": "unknown"}
    try:
        versions["franky"] = metadata.version("franky-control")
    except metadata.PackageNotFoundError:
        return versions
    # The PyPI wheel bundles libfranka as franky_control.libs/libfranka-<hash>.so.<version>.
    for entry in metadata.files("franky-control") or []:
        name = Path(str(entry)).name
        if name.startswith("libfranka") and ".so." in name:
            versions["libfranka"] = name.split(".so.", 1)[1]
    return versions


def _validated_pose(position: np.ndarray, quat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    position = np.asarray(position, dtype=np.float64).reshape(-1)
    quat = np.asarray(quat, dtype=np.float64).reshape(-1)
    if position.shape != (3,) or quat.shape != (4,):
        raise ValueError(f"a pose is a 3-vector and an (x, y, z, w) quaternion, got {position.shape}, {quat.shape}")
    norm = float(np.linalg.norm(quat))
    if not (np.all(np.isfinite(position)) and np.isfinite(norm) and norm > 1e-6):
        raise ValueError(f"non-finite or degenerate pose: position {position}, quat {quat}")
    return position, quat / norm


# How long close() waits for franky's control thread to end the last motion (and for the Hand's
# last command to return).
CLOSE_JOIN_TIMEOUT_S = 15.0
# Robots whose last motion, or Hands whose last command, did not end within that time: kept alive
# rather than destroyed under it.
_STILL_STOPPING: list[Any] = []


def _wait_for_future(future: Any, timeout_s: float) -> bool:
    """Whether a franky Future finished within `timeout_s` (an error counts as finished)."""
    try:
        return bool(future.wait(timeout_s))
    except Exception:
        return True


def call_with_timeout(fn: Any, timeout_s: float) -> Any:
    """`fn()` on a daemon thread; TimeoutError if it has not returned within `timeout_s`.

    For libfranka calls that block far longer than a user should wait (a TCP connect to a silent
    address takes a minute); they release the GIL, so the waiting thread keeps running. An
    abandoned call finishes on its own and its result is dropped (a late connection closes)."""
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="franky-call", daemon=True).start()
    if not done.wait(timeout_s):
        raise TimeoutError(f"no answer within {timeout_s:.1f} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _watch_sigint(flag: threading.Event) -> Any:
    """Chain a SIGINT handler that sets `flag` before the previous one runs; returns the previous
    handler to restore (None off the main thread, where handlers cannot be installed)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        flag.set()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    return previous


def _format_position(position: np.ndarray) -> str:
    return "(" + ", ".join(f"{value:.3f}" for value in position) + ") m"


class FrankyRobot:
    """`Robot` for a Franka arm (FR3 or Panda) with the Franka Hand, through franky."""

    def __init__(
        self,
        cfg: RealConfig,
        safety_box: SafetyBox | None = None,
        impedance: ImpedanceParams | None = None,
    ):
        validate_real_config(cfg)
        self.cfg = cfg
        self.safety_box = safety_box
        self._franky = import_franky()
        self._impedance = impedance if impedance is not None else EnvConfig().compliant
        self._robot: Any = None
        self._model: Any = None
        self._gripper: Any = None
        self._tracker: Any = None
        self._tracker_clips: tuple[float, float] | None = None
        self._gripper_closed: bool | None = None
        self._gripper_future: Any = None
        #: Whether the last compliant target was shortened by the per-step limit.
        self.last_step_limited = False
        self._connect()
        if cfg.gripper:
            self._gripper = self._connect_gripper()

    # ------------------------------------------------------------------ connection

    def _connect(self) -> None:
        franky = self._franky
        ip = self.cfg.robot_ip
        realtime = franky.RealtimeConfig.Enforce if self.cfg.realtime else franky.RealtimeConfig.Ignore
        try:
            robot = call_with_timeout(
                lambda: franky.Robot(
                    ip, relative_dynamics_factor=self.cfg.relative_dynamics_factor, realtime_config=realtime
                ),
                self.cfg.connect_timeout_s,
            )
        except TimeoutError:
            raise RobotConnectionError(
                f"the arm at {ip} did not answer within {self.cfg.connect_timeout_s:.0f} s. Is {ip} the "
                "arm's FCI address (real.robot_ip), is the Ethernet cable in the control box's port, and "
                "does this host have a static address in that subnet? (docs/hardware.md, 'Network')"
            ) from None
        except franky.IncompatibleVersionException as exc:
            raise RobotConnectionError(
                f"the arm at {ip} runs firmware that libfranka {software_versions()['libfranka']} does "
                f"not support ({exc}). A Panda needs franky built against libfranka 0.9.2; an FR3 needs "
                "the libfranka matching its system version: see docs/hardware.md, 'Panda or FR3'."
            ) from None
        except franky.RealtimeException as exc:
            raise RobotConnectionError(
                f"libfranka refused to run without a real-time kernel ({exc}). Boot the PREEMPT_RT "
                "kernel and set the rtprio limits (docs/hardware.md, 'Real-time kernel'); "
                "real.realtime=false is only for franky-sim."
            ) from None
        except Exception as exc:  # franky raises several unrelated types for a dead link
            raise RobotConnectionError(
                f"cannot connect to the arm at {ip}: {str(exc).rstrip('.')}. Check the network cable and the host's "
                "address (docs/hardware.md, 'Network'), that the brakes are open and FCI is "
                "activated in Desk, and that no other program holds the connection."
            ) from None
        try:
            robot.set_collision_behavior(
                list(self.cfg.collision_torque_thresholds_nm), list(self.cfg.collision_force_thresholds_n)
            )
            if self.cfg.load_mass_kg > 0:
                robot.set_load(self.cfg.load_mass_kg, [0.0, 0.0, 0.0], [0.0] * 9)
            if any(self.cfg.tcp_offset_m):
                offset = np.eye(4)
                offset[:3, 3] = self.cfg.tcp_offset_m
                robot.set_ee(offset.flatten(order="F").tolist())
            model = robot.model
        except Exception as exc:
            raise RobotConnectionError(f"the arm at {ip} rejected its configuration: {exc}") from None
        self._robot = robot
        self._model = model

    def _connect_gripper(self) -> Any:
        try:
            return call_with_timeout(lambda: self._franky.Gripper(self.cfg.robot_ip), self.cfg.connect_timeout_s)
        except Exception as exc:
            raise RobotConnectionError(
                f"no Franka Hand answered at {self.cfg.robot_ip} ({exc}). Check that the hand is "
                "mounted and initialised in Desk, or set real.gripper=false for an arm without it."
            ) from None

    def _link_alive(self) -> bool:
        try:
            self._robot.state  # noqa: B018 (a read that raises when the link is down)
        except Exception:
            return False
        return True

    def _reconnect(self) -> None:
        deadline = time.monotonic() + self.cfg.reconnect_timeout_s
        last_error: Exception | None = None
        while True:
            # Release the dead sessions first: the arm (and franky-sim) serve one client each.
            self._robot = None
            self._model = None
            self._release_gripper(timeout_s=1.0)  # over a dead link its command fails at once
            try:
                self._connect()
                if self.cfg.gripper:
                    self._gripper = self._connect_gripper()
                return
            except RobotConnectionError as exc:
                last_error = exc
            if time.monotonic() > deadline:
                raise RobotConnectionError(
                    f"lost the link to the arm at {self.cfg.robot_ip} and could not reconnect within "
                    f"{self.cfg.reconnect_timeout_s:.0f} s: {last_error}"
                )
            time.sleep(0.5)

    # ------------------------------------------------------------------ state

    def _franky_state(self) -> Any:
        try:
            return self._robot.state
        except Exception as exc:
            raise RobotError(f"cannot read the arm's state ({exc}); the link is down or the arm stopped") from None

    def _measured_pose(self, state: Any) -> tuple[np.ndarray, np.ndarray]:
        """TCP pose from the measured joints (forward kinematics with the arm's configured end
        effector), which is what libfranka's O_T_EE reports on hardware; computing it keeps it
        exact while the arm idles, where franky-sim reports a stale O_T_EE."""
        pose = self._model.pose(self._franky.Frame.EndEffector, state)
        return np.asarray(pose.translation, dtype=np.float64).copy(), np.asarray(pose.quaternion, dtype=np.float64).copy()

    def _wait_until_still(self, timeout_s: float = 2.0, max_joint_speed: float = 0.005) -> None:
        """Let the arm settle after a planned move (bounded): arrival is judged at rest."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if np.abs(np.asarray(self._franky_state().dq)).max() < max_joint_speed:
                return
            time.sleep(0.01)

    def read_state(self) -> RobotState:
        state = self._franky_state()
        position, quat = self._measured_pose(state)
        dq = np.asarray(state.dq, dtype=np.float64)
        jacobian = np.asarray(self._model.zero_jacobian(self._franky.Frame.EndEffector, state))
        width = 0.0
        if self._gripper is not None:
            try:
                width = float(self._gripper.width)
            except Exception as exc:
                raise RobotError(f"cannot read the Franka Hand ({exc})") from None
        return RobotState(
            timestamp=time.monotonic(),
            tcp_position=position,
            tcp_quat=quat,
            tcp_twist=jacobian @ dq,
            wrench=np.asarray(state.O_F_ext_hat_K, dtype=np.float64).copy(),
            joint_positions=np.asarray(state.q, dtype=np.float64).copy(),
            joint_velocities=dq,
            gripper_width=width,
        )

    def describe_state(self) -> dict[str, str]:
        """What the arm and the hand report, in words (for `robot-check`): the robot mode
        (Idle, Move, Guiding, Reflex, UserStopped, Other, ...), the active errors ("" when none),
        and the Franka Hand's protocol version ("" without a hand)."""
        state = self._franky_state()
        errors = str(state.current_errors)
        hand_version = ""
        if self._gripper is not None:
            try:
                hand_version = str(self._gripper.server_version)
            except Exception as exc:
                raise RobotError(f"cannot read the Franka Hand ({exc})") from None
        return {
            "mode": str(state.robot_mode).split(".")[-1],
            "errors": "" if errors == "[]" else errors,
            "hand_version": hand_version,
        }

    def set_guiding_axes(self, translation: bool = True, rotation: bool = True, timeout_s: float = 3.0) -> None:
        """Choose which Cartesian axes move freely while someone holds the guiding buttons at the
        flange (the arm enters guiding mode only while they are pressed). Raises RobotError when
        the arm does not accept the setting within `timeout_s` (franky-sim does not implement it);
        the session is then dropped (`close()` does nothing more); connect again to go on."""
        axes = [translation] * 3 + [rotation] * 3
        try:
            call_with_timeout(lambda: self._robot.set_guiding_mode(axes, False), timeout_s)
        except Exception as exc:
            # Drop the session without another command: libfranka aborts the process when one
            # thread stops the robot while another is still blocked inside it.
            self._robot = self._model = self._tracker = None
            self._release_gripper()
            raise RobotError(f"the arm did not accept the guiding-mode setting ({exc})") from None

    def _raise_if_faulted(self, state: Any) -> None:
        franky = self._franky
        if self._tracker is not None and not self._robot.is_in_control:
            self._tracker = None
            reason = "it stopped without an error"
            try:
                self._robot.join_motion(0.0)
            except Exception as exc:  # the stored fault of the control loop
                reason = str(exc)
            raise RobotError(f"the compliant controller stopped: {reason}")
        if state.robot_mode in (franky.RobotMode.Reflex, franky.RobotMode.UserStopped):
            mode = str(state.robot_mode).split(".")[-1]
            raise RobotError(f"the arm is in {mode} mode (errors: {state.current_errors})")

    # ------------------------------------------------------------------ compliant tracking

    def set_impedance(self, params: ImpedanceParams) -> None:
        clips = (params.max_reference_offset_m, params.max_reference_offset_rad)
        if self._tracker is not None:
            if clips != self._tracker_clips:
                # The error clip is fixed when the controller starts: restart it lazily.
                self._stop_tracker()
            else:
                self._tracker.set_gains(
                    translational_stiffness=params.translational_stiffness,
                    rotational_stiffness=params.rotational_stiffness,
                    damping=self._damping(params),
                )
        self._impedance = params

    def _damping(self, params: ImpedanceParams) -> Any:
        if params.damping_ratio == 1.0:
            return self._franky.CRITICAL
        translational = params.damping_ratio * 2.0 * np.sqrt(params.translational_stiffness)
        rotational = params.damping_ratio * 2.0 * np.sqrt(params.rotational_stiffness)
        return np.array([translational] * 3 + [rotational] * 3)

    def _ensure_tracker(self) -> Any:
        if self._tracker is not None:
            return self._tracker
        params = self._impedance
        damping = self._damping(params)
        try:
            self._tracker = self._franky.CartesianImpedanceTracker(
                self._robot,
                translational_stiffness=params.translational_stiffness,
                rotational_stiffness=params.rotational_stiffness,
                damping=None if damping is self._franky.CRITICAL else damping,
                translational_error_clip=np.full(3, params.max_reference_offset_m),
                rotational_error_clip=np.full(3, params.max_reference_offset_rad),
            )
        except Exception as exc:
            raise RobotError(f"the arm refused to start compliant control: {exc}") from None
        self._tracker_clips = (params.max_reference_offset_m, params.max_reference_offset_rad)
        return self._tracker

    def _stop_tracker(self) -> None:
        """Bring a running tracker to rest (franky's torque stop: ramp to damping, ≤ 2 s)."""
        tracker, self._tracker = self._tracker, None
        if tracker is None:
            return
        try:
            tracker.stop()
        except Exception:
            # The controller had already faulted; its error is reported by the caller's path.
            pass

    def set_target(self, position: np.ndarray, quat: np.ndarray) -> None:
        position, quat = _validated_pose(position, quat)
        state = self._franky_state()
        self._raise_if_faulted(state)
        measured_position, measured_quat = self._measured_pose(state)

        wrench = np.asarray(state.O_F_ext_hat_K, dtype=np.float64)
        verdict = check_wrench(wrench, self.cfg.max_external_force_n, self.cfg.max_external_torque_nm)
        if verdict.exceeded:
            self._back_off(measured_position, measured_quat, wrench)
            raise RobotError(
                f"{verdict.describe(self.cfg.max_external_force_n, self.cfg.max_external_torque_nm)}: "
                f"backed off {self.cfg.force_backoff_m * 1000:.0f} mm and stopped"
            )

        position, quat, self.last_step_limited = limit_step(
            measured_position,
            measured_quat,
            position,
            quat,
            self.cfg.max_step_translation_m,
            self.cfg.max_step_rotation_rad,
        )
        if self.safety_box is not None:
            position, quat, _ = self.safety_box.clip(position, quat)
        tracker = self._ensure_tracker()
        tracker.set_target(self._franky.Affine(position, quat))

    def _back_off(self, position: np.ndarray, quat: np.ndarray, wrench: np.ndarray) -> None:
        """Retreat along the external force, compliantly, and wait (bounded) until there."""
        retreat = backoff_position(position, wrench, self.cfg.force_backoff_m)
        if self.safety_box is not None:
            retreat, quat, _ = self.safety_box.clip(retreat, quat)
        try:
            tracker = self._ensure_tracker()
            tracker.set_target(self._franky.Affine(retreat, quat))
        except RobotError:
            return  # the controller is down: nothing can move; the caller reports the fault
        deadline = time.monotonic() + _BACKOFF_TIMEOUT_S
        while time.monotonic() < deadline:
            current, _ = self._measured_pose(self._franky_state())
            if np.linalg.norm(current - retreat) < 0.002:
                break
            time.sleep(0.01)
        self._stop_tracker()

    # ------------------------------------------------------------------ blocking moves

    def _halt(self, timeout_s: float = 1.0) -> bool:
        """Stop the current motion and wait up to `timeout_s` for franky's control thread to end
        it; returns whether it did."""
        try:
            self._robot.stop()
        except Exception:
            pass
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._robot.join_motion(min(1.0, max(deadline - time.monotonic(), 0.0))):
                    return True
            except Exception:
                return True  # the preemption we just caused: the motion is over
            if time.monotonic() >= deadline:
                return False

    def _run_blocking(self, motion: Any, timeout_s: float, what: str) -> None:
        try:
            self._robot.move(motion, asynchronous=True)
        except Exception as exc:
            raise RobotError(f"{what} was refused: {exc}") from None
        deadline = time.monotonic() + timeout_s
        # franky answers Ctrl-C inside join_motion by stopping the motion and raising
        # "preempted", swallowing the KeyboardInterrupt; note the signal so it can be re-raised.
        interrupted = threading.Event()
        previous_handler = _watch_sigint(interrupted)
        try:
            while True:
                try:
                    if self._robot.join_motion(_JOIN_POLL_S):
                        return
                except Exception as exc:
                    if interrupted.is_set():
                        self._halt()
                        raise KeyboardInterrupt from None
                    raise RobotError(f"{what} failed: {exc}") from None
                if time.monotonic() > deadline:
                    self._halt()
                    raise RobotError(f"{what} did not finish within {timeout_s:.1f} s; the arm was stopped")
        except KeyboardInterrupt:
            self._halt()
            raise
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)

    def move_to(self, position: np.ndarray, quat: np.ndarray, timeout_s: float = 10.0) -> None:
        position, quat = _validated_pose(position, quat)
        self._stop_tracker()
        motion = self._franky.CartesianMotion(
            self._franky.Affine(position, quat), self._franky.ReferenceType.Absolute
        )
        what = f"the move to {_format_position(position)}"
        self._run_blocking(motion, timeout_s, what)
        self._wait_until_still()
        reached, reached_quat = self._measured_pose(self._franky_state())
        distance = float(np.linalg.norm(reached - position))
        angle = float((Rotation.from_quat(quat).inv() * Rotation.from_quat(reached_quat)).magnitude())
        if distance > self.cfg.arrival_tolerance_m or angle > self.cfg.arrival_tolerance_rad:
            raise RobotError(
                f"{what} ended {distance * 1000:.1f} mm / {np.degrees(angle):.1f}° away from its target "
                f"(tolerance {self.cfg.arrival_tolerance_m * 1000:.1f} mm / "
                f"{np.degrees(self.cfg.arrival_tolerance_rad):.1f}°): is something in the way?"
            )

    def joint_reset(self) -> None:
        self._stop_tracker()
        home = np.asarray(self.cfg.home_joints, dtype=np.float64)
        motion = self._franky.JointMotion(self._franky.JointState(home))
        self._run_blocking(motion, _JOINT_RESET_TIMEOUT_S, "the joint reset")
        self._wait_until_still()
        reached = np.asarray(self._franky_state().q, dtype=np.float64)
        error = float(np.max(np.abs(reached - home)))
        if error > self.cfg.joint_arrival_tolerance_rad:
            raise RobotError(
                f"the joint reset ended {error:.3f} rad from real.home_joints "
                f"(tolerance {self.cfg.joint_arrival_tolerance_rad:.3f} rad)"
            )

    # ------------------------------------------------------------------ gripper

    def set_gripper(self, closed: bool) -> None:
        """Close (grasp at any width, with `gripper_force_n`) or open to `gripper_open_width_m`.
        Repeating the current command does nothing, so calling it every step is free."""
        if self._gripper is None or closed == self._gripper_closed:
            return
        try:
            if closed:
                # Wide epsilons: whatever width the fingers stop at counts as a grasp.
                self._gripper_future = self._gripper.grasp_async(
                    0.0, self.cfg.gripper_speed_mps, self.cfg.gripper_force_n, 1.0, 1.0
                )
            else:
                self._gripper_future = self._gripper.move_async(
                    self.cfg.gripper_open_width_m, self.cfg.gripper_speed_mps
                )
        except Exception as exc:
            raise RobotError(f"the Franka Hand refused the command: {exc}") from None
        self._gripper_closed = closed

    def wait_for_gripper(self, timeout_s: float = 5.0) -> bool:
        """Block until the last gripper command finished; returns whether it succeeded."""
        future = self._gripper_future
        if future is None:
            return True
        if not future.wait(timeout_s):
            return False
        try:
            return bool(future.get())
        except Exception as exc:
            raise RobotError(f"the Franka Hand reported an error: {exc}") from None

    # ------------------------------------------------------------------ faults and shutdown

    def recover(self) -> None:
        """Clear a fault: reconnect if the link dropped, run libfranka's automatic error recovery,
        then lift `recovery_lift_m` (capped at the safety box's top). Raises RobotError when the
        arm needs a person (user stop pressed, recovery refused)."""
        self._abandon_tracker()
        if not self._link_alive():
            self._reconnect()
        try:
            recovered = self._robot.recover_from_errors()
        except Exception as exc:
            raise RobotError(f"automatic error recovery failed: {exc}") from None
        if not recovered:
            raise RecoveryRefused(
                "the arm refused automatic error recovery: release the user stop or emergency stop, "
                "check Desk for the error, then retry"
            )
        self._gripper_closed = None  # re-send the next gripper command after a fault
        self._lift_clear()

    def _abandon_tracker(self) -> None:
        tracker, self._tracker = self._tracker, None
        if tracker is None:
            return
        try:
            if self._robot.is_in_control:
                tracker.stop()
            else:
                self._robot.join_motion(0.0)
        except Exception:
            pass  # the fault being recovered from

    def _lift_clear(self) -> None:
        if self.cfg.recovery_lift_m <= 0:
            return
        position, quat = self._measured_pose(self._franky_state())
        target_z = position[2] + self.cfg.recovery_lift_m
        if self.safety_box is not None:
            target_z = min(target_z, float(self.safety_box.position_high[2]))
        if target_z - position[2] < 1e-3:
            return
        position[2] = target_z
        self.move_to(position, quat, timeout_s=_RECOVERY_MOVE_TIMEOUT_S)

    def close(self) -> None:
        """Stop any motion and release the connection. Safe to call twice."""
        if self._robot is None:
            return
        self._stop_tracker()
        # Dropping the Robot while franky's control thread still runs a motion crashes the process
        # (seen on a loaded machine, where the stop takes longer than a second): wait for it.
        if not self._halt(CLOSE_JOIN_TIMEOUT_S):
            _STILL_STOPPING.append(self._robot)  # never destroyed under a live motion
        self._release_gripper()
        self._robot = None
        self._model = None

    def _release_gripper(self, timeout_s: float = CLOSE_JOIN_TIMEOUT_S) -> None:
        """Drop the Hand's session once its last command has returned. franky runs a grasp or move
        on a thread of its own that reads the Hand's connection: freeing the gripper under it
        crashed the process at exit (a segfault in `Gripper::grasp`, seen on a loaded machine
        right after a recording). A command still running after `timeout_s` is stopped; one
        that does not end even then keeps its gripper alive, like a robot that will not stop."""
        gripper, future = self._gripper, self._gripper_future
        self._gripper = self._gripper_future = None
        self._gripper_closed = None
        if future is None:
            return
        if _wait_for_future(future, timeout_s):
            return
        try:
            gripper.stop()
        except Exception:
            pass  # the link may be gone; the wait below decides
        if not _wait_for_future(future, timeout_s):
            _STILL_STOPPING.append((gripper, future))

    def __enter__(self) -> FrankyRobot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
