"""Bring-up check of the real cell, item by item, each ending PASS, FAIL or SKIP with what was
measured or, in plain words, what is wrong and what to do.

    results = run_robot_check(cfg, CheckOptions(snapshot_dir=Path("runs/check")), report=print)

Items, in order (a failure that makes the rest meaningless stops the robot items; the cameras
are checked even when the arm cannot be reached):
config (poses inside the box, limits consistent) → software (franky, libfranka) → connection →
state (mode, errors, what the arm and hand report) → gripper (grasp only: a held peg stays held)
→ cameras (rate, frame age, a snapshot PNG each) → reset move → control loop (N env steps at the
configured rate: period overrun p50/p99, observation age) → compliant move (1 cm inside the box
and back). Every wait is bounded, so the check ends even when the cell does not answer.

`cfg` is the root config (`franka_rl.config.Config`), duck-typed as in `robot_env.real`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from robot_env import make_env
from robot_env.cameras import CaptureThreadCamera, open_camera
from robot_env.franky_backend import FrankyRobot, software_versions
from robot_env.geometry import pose6_to_pos_quat
from robot_env.interfaces import CameraError, MonotonicClock, RobotError
from robot_env.real import RealSetup
from robot_env.real_config import RealConfigError
from robot_env.safety import SafetyBox

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"

# Robot modes in which the arm takes commands.
_READY_MODES = ("Idle", "Move")
_MODE_ADVICE = {
    "Reflex": "a reflex stopped the arm: clear it in Desk or with the pilot's check button",
    "UserStopped": "the user stop is pressed: release it",
    "Guiding": "someone holds the guiding buttons: let go",
    "Other": "the brakes are closed or FCI is not active: open the brakes and activate FCI in Desk",
    "AutomaticErrorRecovery": "the arm is recovering from an error: wait a moment and run again",
}
# How long a camera's frame rate is measured.
_CAMERA_MEASURE_S = 1.0
# A camera passes at this fraction of the frame rate it was asked for.
_MIN_FPS_FRACTION = 0.8
_GRIPPER_TIMEOUT_S = 5.0
_EMPTY_HAND_WIDTH_M = 0.005
_RESET_MOVE_TIMEOUT_S = 60.0
# The compliant probe: distance, how close it must get (the tracker's steady-state error under
# friction is a few mm on hardware), how long each leg may take, how much room to keep to the box.
_PROBE_DISTANCE_M = 0.01
_PROBE_TOLERANCE_M = 0.003
_PROBE_LEG_TIMEOUT_S = 3.0
_PROBE_BOX_MARGIN_M = 0.002
# The control loop passes when the 99th-percentile overrun stays below this fraction of a period.
_MAX_P99_OVERRUN_FRACTION = 0.25


@dataclass(frozen=True)
class CheckResult:
    item: str
    status: str  # PASS, FAIL or SKIP
    detail: str

    def line(self) -> str:
        return f"{self.status}  {self.item:<14} {self.detail}"


@dataclass(frozen=True)
class CheckOptions:
    cameras: bool = True
    gripper: bool = True
    # False: only read; the arm does not move (no reset, control loop or compliant move).
    motion: bool = True
    # Env steps timed in the control-loop item.
    steps: int = 50
    # Where camera snapshots go (None: not saved).
    snapshot_dir: Path | None = None
    seed: int = 0


def arm_family(libfranka_version: str) -> str:
    """Which arms a libfranka release can drive: the Panda's last system (4.x) speaks the protocol
    of libfranka < 0.10, the FR3 needs ≥ 0.10 (Franka's compatibility matrix has the details)."""
    try:
        major, minor = (int(part) for part in libfranka_version.split(".")[:2])
    except ValueError:
        return "unknown libfranka version; check the arm's system version against it (docs/hardware.md, 'Panda or FR3')"
    if (major, minor) >= (0, 10):
        return "for an FR3 whose system version it supports; a Panda needs franky built for libfranka 0.9.2"
    return "for a Panda (FER, system 4.x); an FR3 needs libfranka 0.10 or later"


def config_problems(cfg: RealSetup) -> list[str]:
    """What in the task/env/real config cannot work on the cell, in words ([] when sane)."""
    task, env, real = cfg.task, cfg.env, cfg.real
    try:
        box = SafetyBox.from_task(task)
        target_position, target_quat = pose6_to_pos_quat(task.target_pose)
        reset_position, reset_quat = pose6_to_pos_quat(task.reset_pose)
    except ValueError as exc:
        return [str(exc)]
    problems = []
    for name, position, quat in (("target_pose", target_position, target_quat), ("reset_pose", reset_position, reset_quat)):
        if not box.contains(position, quat):
            problems.append(
                f"task.{name} {np.round(position, 3).tolist()} lies outside the safety box "
                f"(task.position_low/high, rotation_low/high)"
            )
    if reset_position[2] <= target_position[2]:
        problems.append("task.reset_pose must lie above task.target_pose (larger z): episodes start above the hole")
    if task.action_scale_translation > real.max_step_translation_m:
        problems.append(
            f"task.action_scale_translation {task.action_scale_translation} exceeds real.max_step_translation_m "
            f"{real.max_step_translation_m}: full actions would be cut short"
        )
    if task.action_scale_rotation > real.max_step_rotation_rad:
        problems.append(
            f"task.action_scale_rotation {task.action_scale_rotation} exceeds real.max_step_rotation_rad "
            f"{real.max_step_rotation_rad}"
        )
    contact_force = env.compliant.translational_stiffness * env.compliant.max_reference_offset_m
    if contact_force >= real.max_external_force_n:
        problems.append(
            f"env.compliant allows {contact_force:.0f} N of contact force (stiffness × max_reference_offset_m), "
            f"at or above real.max_external_force_n {real.max_external_force_n}: lower the offset or the stiffness"
        )
    devices = {device.name for device in real.cameras}
    missing = [name for name in env.cameras if name not in devices]
    if missing:
        problems.append(f"env.cameras lists {missing} but real.cameras has no device with that name")
    return problems


def _format_mm(position: np.ndarray) -> str:
    return "(" + ", ".join(f"{value:.3f}" for value in position) + ") m"


def _check_state(robot: FrankyRobot, cfg: RealSetup) -> CheckResult:
    reported = robot.describe_state()
    state = robot.read_state()
    box = SafetyBox.from_task(cfg.task)
    force = float(np.linalg.norm(state.wrench[:3]))
    where = "inside" if box.contains(state.tcp_position, state.tcp_quat, tolerance=1e-3) else "outside"
    hand = f", hand protocol v{reported['hand_version']} at {state.gripper_width * 1000:.1f} mm" if reported["hand_version"] else ""
    facts = (
        f"mode {reported['mode']}, TCP at {_format_mm(state.tcp_position)} ({where} the safety box), "
        f"external force {force:.1f} N{hand}"
    )
    if reported["errors"]:
        return CheckResult("state", FAIL, f"{facts}; active errors {reported['errors']}: clear them in Desk, then run again")
    if reported["mode"] not in _READY_MODES:
        advice = _MODE_ADVICE.get(reported["mode"], "check Desk")
        return CheckResult("state", FAIL, f"{facts}; {advice}")
    if force >= cfg.real.max_external_force_n:
        return CheckResult(
            "state", FAIL,
            f"{facts}: at rest the force estimate already exceeds real.max_external_force_n; set "
            "real.load_mass_kg to the held peg's mass, check that nothing touches the arm",
        )
    return CheckResult("state", PASS, facts)


def _check_gripper(robot: FrankyRobot) -> CheckResult:
    # Only ever close: opening would drop a peg that is already in the hand.
    robot.set_gripper(closed=True)
    if not robot.wait_for_gripper(_GRIPPER_TIMEOUT_S):
        return CheckResult(
            "gripper", FAIL,
            f"the Franka Hand did not finish grasping within {_GRIPPER_TIMEOUT_S:.0f} s: re-initialise "
            "the hand in Desk (homing)",
        )
    width = robot.read_state().gripper_width
    # The fingers of an empty Franka Hand stop a millimetre or two apart.
    held = "holding something (the peg?)" if width > _EMPTY_HAND_WIDTH_M else "closed on nothing: is the peg in the hand?"
    return CheckResult("gripper", PASS, f"grasped; fingers {width * 1000:.1f} mm apart, {held}")


def _check_camera(name: str, cfg: RealSetup, snapshot_dir: Path | None) -> tuple[CheckResult, CaptureThreadCamera | None]:
    devices = {device.name: device for device in cfg.real.cameras}
    item = f"camera {name}"
    if name not in devices:
        return CheckResult(item, FAIL, f"real.cameras has no device named '{name}' (env.cameras lists it)"), None
    device = devices[name]
    try:
        camera = open_camera(device, cfg.env.image_height, cfg.env.image_width)
    except CameraError as exc:
        return CheckResult(item, FAIL, str(exc)), None
    try:
        before = camera.frames_captured
        time.sleep(_CAMERA_MEASURE_S)
        fps = (camera.frames_captured - before) / _CAMERA_MEASURE_S
        frame, stamp = camera.read()
        age = time.monotonic() - stamp
    except CameraError as exc:
        camera.close()
        return CheckResult(item, FAIL, str(exc)), None
    saved = ""
    if snapshot_dir is not None:
        snapshot_dir.mkdir(parents=True, exist_ok=True)
        path = snapshot_dir / f"{name}.png"
        cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        saved = f", snapshot {path}"
    source = f"{device.kind} {device.device!r}"
    facts = f"{source}: {fps:.1f} fps (asked {device.fps}), newest frame {age * 1000:.0f} ms old{saved}"
    if fps < _MIN_FPS_FRACTION * device.fps:
        return CheckResult(
            item, FAIL,
            f"{facts}: too slow. Use a USB 3 port of its own, a smaller capture size, or a lower real.cameras[].fps",
        ), camera
    return CheckResult(item, PASS, facts), camera


def _track(robot: FrankyRobot, position: np.ndarray, quat: np.ndarray, period_s: float) -> tuple[float, float]:
    """Hold a compliant target until the TCP is within tolerance or the leg times out; returns
    (remaining distance, seconds taken)."""
    started = time.monotonic()
    distance = float("inf")
    while time.monotonic() - started < _PROBE_LEG_TIMEOUT_S:
        robot.set_target(position, quat)
        time.sleep(period_s)
        distance = float(np.linalg.norm(robot.read_state().tcp_position - position))
        if distance < _PROBE_TOLERANCE_M / 3:
            break
    return distance, time.monotonic() - started


def _probe_offset(position: np.ndarray, box: SafetyBox) -> tuple[np.ndarray, str] | None:
    """A 1 cm offset that keeps the TCP inside the box: up if there is room (away from the
    fixture), else sideways, down last."""
    directions = (
        ((0, 0, 1), "up"), ((1, 0, 0), "+x"), ((-1, 0, 0), "-x"), ((0, 1, 0), "+y"), ((0, -1, 0), "-y"), ((0, 0, -1), "down"),
    )
    for direction, name in directions:
        candidate = position + _PROBE_DISTANCE_M * np.asarray(direction, dtype=np.float64)
        inside = np.all(candidate >= box.position_low + _PROBE_BOX_MARGIN_M) and np.all(
            candidate <= box.position_high - _PROBE_BOX_MARGIN_M
        )
        if inside:
            return candidate - position, name
    return None


def _check_compliant_move(robot: FrankyRobot, cfg: RealSetup) -> CheckResult:
    box = SafetyBox.from_task(cfg.task)
    state = robot.read_state()
    start, quat = state.tcp_position.copy(), state.tcp_quat.copy()
    probe = _probe_offset(start, box)
    if probe is None:
        return CheckResult("compliant move", FAIL, f"no room for a 1 cm move inside the safety box from {_format_mm(start)}")
    offset, direction = probe
    robot.set_impedance(cfg.env.compliant)
    period = 1.0 / cfg.env.control_hz
    out_error, out_time = _track(robot, start + offset, quat, period)
    back_error, back_time = _track(robot, start, quat, period)
    facts = (
        f"1 cm {direction} and back: ended {out_error * 1000:.1f} / {back_error * 1000:.1f} mm from the targets "
        f"after {out_time:.1f} / {back_time:.1f} s"
    )
    if max(out_error, back_error) > _PROBE_TOLERANCE_M:
        return CheckResult(
            "compliant move", FAIL,
            f"{facts}: the arm does not follow the compliant controller. Check that nothing is in the way, "
            "real.load_mass_kg, and env.compliant (stiffness too low?)",
        )
    return CheckResult("compliant move", PASS, facts)


def _check_control_loop(env: Any, steps: int, control_hz: float, seed: int) -> CheckResult:
    period = 1.0 / control_hz
    env.reset(seed=seed)
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    overruns, ages = [], []
    started = time.monotonic()
    for _ in range(steps):
        _, _, _, _, info = env.step(action)
        if "robot_error" in info:
            return CheckResult("control loop", FAIL, f"the arm faulted while holding still: {info['robot_error']}")
        overruns.append(info["period_overrun_s"])
        ages.append(info["observation_age_s"])
    rate = steps / (time.monotonic() - started)
    p50, p99 = np.percentile(overruns, [50, 99])
    facts = (
        f"{steps} steps at {control_hz:g} Hz: {rate:.2f} Hz achieved, period overrun p50 {p50 * 1000:.1f} ms / "
        f"p99 {p99 * 1000:.1f} ms, observation age p99 {np.percentile(ages, 99) * 1000:.1f} ms"
    )
    if p99 > _MAX_P99_OVERRUN_FRACTION * period:
        return CheckResult(
            "control loop", FAIL,
            f"{facts}: steps run late. Is the PREEMPT_RT kernel running, the host busy, a camera slow?",
        )
    return CheckResult("control loop", PASS, facts)


def _reset_move(robot: FrankyRobot, cfg: RealSetup) -> CheckResult:
    """To the nominal reset pose, the way every episode starts: straight up first when the TCP is
    below it (out of the hole), then the planned move."""
    position, quat = pose6_to_pos_quat(cfg.task.reset_pose)
    started = time.monotonic()
    state = robot.read_state()
    if state.tcp_position[2] < position[2] - 0.005:
        lift = state.tcp_position.copy()
        lift[2] = position[2]
        robot.move_to(lift, state.tcp_quat, timeout_s=_RESET_MOVE_TIMEOUT_S)
    robot.move_to(position, quat, timeout_s=_RESET_MOVE_TIMEOUT_S)
    reached = robot.read_state()
    error = float(np.linalg.norm(reached.tcp_position - position))
    angle = float((Rotation.from_quat(quat).inv() * Rotation.from_quat(reached.tcp_quat)).magnitude())
    return CheckResult(
        "reset move", PASS,
        f"reached task.reset_pose within {error * 1000:.1f} mm / {np.degrees(angle):.1f}° in {time.monotonic() - started:.1f} s",
    )


def run_robot_check(
    cfg: RealSetup, options: CheckOptions, report: Callable[[CheckResult], None] = lambda result: None
) -> list[CheckResult]:
    """Run every item, calling `report` as each one finishes; returns them all."""
    results: list[CheckResult] = []

    def record(result: CheckResult) -> CheckResult:
        results.append(result)
        report(result)
        return result

    problems = config_problems(cfg)
    record(CheckResult("config", FAIL, "; ".join(problems)) if problems else CheckResult(
        "config", PASS, "poses inside the safety box, action scales within the per-step limits, cameras named"
    ))
    motion_items = ("reset move", "control loop", "compliant move")
    cameras: list[CaptureThreadCamera] = []

    def check_cameras() -> None:
        if not options.cameras:
            record(CheckResult("cameras", SKIP, "--no-cameras"))
            return
        for name in cfg.env.cameras:
            result, camera = _check_camera(name, cfg, options.snapshot_dir)
            record(result)
            if camera is not None:
                cameras.append(camera)

    def without_arm(reason: str) -> list[CheckResult]:
        # The cameras need no arm: a cell can be set up camera by camera before the arm is ready.
        try:
            check_cameras()
        finally:
            for camera in cameras:
                camera.close()
        for item in motion_items:
            record(CheckResult(item, SKIP, reason))
        return results

    versions = software_versions()
    if versions["franky"] == "not installed":
        record(CheckResult(
            "software", FAIL,
            "franky is not installed: FR3: pip install 'franka-rl[real]'; Panda: see docs/hardware.md, 'Panda or FR3'",
        ))
        return without_arm("franky is not installed")
    record(CheckResult(
        "software", PASS,
        f"franky {versions['franky']} with libfranka {versions['libfranka']}: {arm_family(versions['libfranka'])}",
    ))

    use_gripper = options.gripper and cfg.real.gripper
    try:
        robot = FrankyRobot(replace(cfg.real, gripper=use_gripper), SafetyBox.from_task(cfg.task), impedance=cfg.env.compliant)
    except (RobotError, RealConfigError, ValueError) as exc:
        record(CheckResult("connection", FAIL, str(exc)))
        return without_arm("no connection to the arm")
    env = None
    try:
        hand = " and the Franka Hand" if use_gripper else ""
        record(CheckResult("connection", PASS, f"connected to the arm{hand} at {cfg.real.robot_ip}; libfranka accepted its version"))
        state_ok = record(_guarded("state", lambda: _check_state(robot, cfg))).status == PASS

        if not use_gripper:
            reason = "--no-gripper" if cfg.real.gripper else "real.gripper is false"
            record(CheckResult("gripper", SKIP, reason))
        elif state_ok:
            record(_guarded("gripper", lambda: _check_gripper(robot)))
        else:
            record(CheckResult("gripper", SKIP, "the arm is not ready (see state)"))

        check_cameras()

        blocked = None if options.motion else "--no-motion"
        if blocked is None and not state_ok:
            blocked = "the arm is not ready (see state)"
        if blocked is None and options.cameras and len(cameras) != len(cfg.env.cameras):
            blocked = "a camera failed (the control loop reads every camera)"
        if blocked is not None:
            for item in motion_items:
                record(CheckResult(item, SKIP, blocked))
            return results

        if record(_guarded("reset move", lambda: _reset_move(robot, cfg))).status != PASS:
            return results
        env_cfg = cfg.env if options.cameras else replace(cfg.env, cameras=[])
        env = make_env(robot, cameras, MonotonicClock(), cfg.task, env_cfg)
        if record(_guarded("control loop", lambda: _check_control_loop(env, options.steps, cfg.env.control_hz, options.seed))).status != PASS:
            return results
        record(_guarded("compliant move", lambda: _check_compliant_move(robot, cfg)))
        return results
    finally:
        if env is not None:
            env.close()
        else:
            for camera in cameras:
                camera.close()
            robot.close()


def _guarded(item: str, check: Callable[[], CheckResult]) -> CheckResult:
    """Run a check that commands the arm; a fault becomes its FAIL line."""
    try:
        return check()
    except (RobotError, CameraError) as exc:
        return CheckResult(item, FAIL, str(exc))


def summary(results: list[CheckResult]) -> str:
    counts = {status: sum(result.status == status for result in results) for status in (PASS, FAIL, SKIP)}
    text = f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped"
    if counts[FAIL]:
        text += ": fix the FAIL items above (docs/hardware.md), then run again"
    return text
