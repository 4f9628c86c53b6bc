"""Intervention wrapper: device input wins over the policy, hold-over after release, the executed
action is what the env received and what `info` reports; plus the keyboard devices."""

from __future__ import annotations

import os
import time

import gymnasium as gym
import numpy as np
import pytest

from teleop import (
    IDLE,
    InterventionWrapper,
    NullDevice,
    ScriptedDevice,
    TeleopCommand,
    TeleopConfig,
)
from teleop.devices import AxisMapping, DeviceError
from teleop.keyboard import TerminalKeyboard, decode_terminal_bytes, keys_to_command, open_keyboard


class RecordingEnv(gym.Env):
    """Counts steps and remembers every action it was given."""

    def __init__(self, action_dim=7):
        self.observation_space = gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)})
        self.action_space = gym.spaces.Box(-1, 1, (action_dim,), np.float32)
        self.received = []
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return {"state": np.zeros(1, np.float32)}, {}

    def step(self, action):
        self.received.append(np.array(action))
        self.t += 1
        return {"state": np.full(1, self.t, np.float32)}, 0.0, False, False, {"success": False}


def twist(x):
    return TeleopCommand(twist=np.array([x, 0, 0, 0, 0, 0], np.float32))


def run(commands, hold_over, action_dim=7, gripper=None):
    script = list(commands)
    seen = []

    def device_script(observation, step):
        seen.append(float(observation["state"][0]))
        return None

    device = ScriptedDevice(device_script)
    device.read = lambda observation=None, _orig=device.read: (_orig(observation), script.pop(0))[1]
    env = InterventionWrapper(RecordingEnv(action_dim), device, hold_over_steps=hold_over)
    env.reset()
    policy = np.full(action_dim, 0.5, np.float32)
    if gripper is not None:
        policy[6] = gripper
    infos = [env.step(policy)[4] for _ in range(len(commands))]
    return env, infos, seen


def test_device_overrides_policy_and_hold_over_follows_release():
    commands = [IDLE, twist(0.8), twist(-0.3), IDLE, IDLE, IDLE, IDLE]
    env, infos, seen = run(commands, hold_over=2)
    intervened = [i["intervened"] for i in infos]
    assert intervened == [False, True, True, True, True, False, False]
    executed = np.stack([i["executed_action"] for i in infos])
    np.testing.assert_allclose(executed[0], 0.5)  # the policy
    np.testing.assert_allclose(executed[1, :6], [0.8, 0, 0, 0, 0, 0])  # the device, not the policy
    np.testing.assert_allclose(executed[2, :6], [-0.3, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(executed[3:5, :6], 0.0)  # hold-over: the arm holds still
    np.testing.assert_allclose(executed[5:], 0.5)  # back to the policy
    # What the env received is exactly what info reports as executed.
    np.testing.assert_array_equal(np.stack(env.unwrapped.received), executed)
    for info in infos:
        np.testing.assert_allclose(info["policy_action"], 0.5)
    # The device sees the newest observation before each step.
    assert seen == [0, 1, 2, 3, 4, 5, 6]


def test_new_input_during_hold_over_restarts_it():
    commands = [twist(1), IDLE, twist(1), IDLE, IDLE, IDLE]
    _, infos, _ = run(commands, hold_over=2)
    assert [i["intervened"] for i in infos] == [True, True, True, True, True, False]


def test_zero_hold_over_returns_control_at_once():
    _, infos, _ = run([twist(1), IDLE, twist(1)], hold_over=0)
    assert [i["intervened"] for i in infos] == [True, False, True]


def test_gripper_follows_the_operator_until_the_policy_takes_over():
    close = TeleopCommand(gripper=-1.0)
    commands = [close, twist(0.2), IDLE, IDLE]
    _, infos, _ = run(commands, hold_over=1, gripper=1.0)
    grip = [float(i["executed_action"][6]) for i in infos]
    assert grip == [-1.0, -1.0, -1.0, 1.0]
    # An operator who never touched the gripper leaves it where the policy wants it.
    _, infos, _ = run([twist(0.2)], hold_over=0, gripper=0.7)
    assert infos[0]["executed_action"][6] == pytest.approx(0.7)


def test_six_dimensional_action_and_marks():
    mark = TeleopCommand(success=True)  # a mark alone is not an intervention
    _, infos, _ = run([mark, twist(0.4)], hold_over=0, action_dim=6)
    assert infos[0]["teleop_success"] and not infos[0]["intervened"]
    assert infos[1]["executed_action"].shape == (6,) and infos[1]["intervened"]


def test_null_device_never_intervenes():
    env = InterventionWrapper(RecordingEnv(), NullDevice(), hold_over_steps=3)
    env.reset()
    assert not any(env.step(np.zeros(7))[4]["intervened"] for _ in range(5))


def test_keys_to_command():
    mapping = AxisMapping()
    command = keys_to_command({"w", "d", "c", "enter"}, 0.5, mapping)
    np.testing.assert_allclose(command.twist, [0.5, 0.5, 0, 0, 0, 0])
    assert command.gripper == -1.0 and command.success and command.active
    assert not keys_to_command({"w", "s"}, 0.5, mapping).active  # opposite keys cancel
    assert decode_terminal_bytes(b"wA\r\x7f\x1b[A") == ["w", "a", "enter", "backspace"]


def test_terminal_keyboard_holds_a_press_then_releases():
    read_fd, write_fd = os.pipe()
    cfg = TeleopConfig(device="keyboard", terminal_key_hold_s=0.3, keyboard_speed=1.0)
    keyboard = TerminalKeyboard(cfg, AxisMapping(), fd=read_fd)
    try:
        os.write(write_fd, b"r")
        deadline = time.monotonic() + 2
        while not keyboard.read().active and time.monotonic() < deadline:
            time.sleep(0.01)
        np.testing.assert_allclose(keyboard.read().twist, [0, 0, 1, 0, 0, 0])
        time.sleep(0.4)
        assert not keyboard.read().active
    finally:
        keyboard.close()
        os.close(write_fd)
        os.close(read_fd)


def test_keyboard_without_display_falls_back_with_a_message(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    messages = []
    # Under pytest stdin is not a terminal: the fallback explains itself, then says what to do.
    with pytest.raises(DeviceError, match="not a terminal"):
        open_keyboard(TeleopConfig(device="keyboard"), notify=messages.append)
    assert any("no X display" in m and "terminal" in m for m in messages)
    with pytest.raises(DeviceError, match="keyboard_backend=terminal"):
        open_keyboard(TeleopConfig(device="keyboard", keyboard_backend="pynput"), notify=messages.append)
