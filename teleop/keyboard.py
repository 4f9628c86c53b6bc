"""Keyboard teleoperation: pynput (imported lazily) with an X display, else the terminal.

Keys (device frame: x right, y forward, z up, as the operator sees it):
    w / s   forward / back        i / k   tilt about x (+ / -)
    d / a   right / left          l / j   tilt about y (+ / -)
    r / f   up / down             o / u   turn about z (+ / -)
    c       close the gripper     v       open the gripper
    Enter   mark success          Backspace  mark failure

Without a display pynput cannot see the keyboard, so the terminal is read instead (keep it
focused). A terminal reports key presses but no releases: a press counts as held for
`teleop.terminal_key_hold_s`, longer than the auto-repeat delay, so holding a key moves smoothly
and the motion stops that long after release.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from teleop.config import TeleopConfig
from teleop.devices import AxisMapping, DeviceError, TeleopCommand, roles_to_command

AXIS_KEYS: dict[str, tuple[int, float]] = {
    "d": (0, 1.0), "a": (0, -1.0),
    "w": (1, 1.0), "s": (1, -1.0),
    "r": (2, 1.0), "f": (2, -1.0),
    "i": (3, 1.0), "k": (3, -1.0),
    "l": (4, 1.0), "j": (4, -1.0),
    "o": (5, 1.0), "u": (5, -1.0),
}
ROLE_KEYS: dict[str, str] = {"c": "gripper_close", "v": "gripper_open", "enter": "success", "backspace": "failure"}
HELP = "keys: w/s a/d r/f move, i/k j/l u/o rotate, c/v close/open gripper, Enter success, Backspace failure"


def keys_to_command(pressed: Iterable[str], speed: float, mapping: AxisMapping) -> TeleopCommand:
    """The command for a set of held keys (opposite keys cancel)."""
    twist = np.zeros(6, np.float32)
    roles = set()
    for key in pressed:
        if key in AXIS_KEYS:
            axis, sign = AXIS_KEYS[key]
            twist[axis] += sign * speed
        elif key in ROLE_KEYS:
            roles.add(ROLE_KEYS[key])
    return roles_to_command(mapping.apply(twist), roles)


class _KeyboardBase:
    def __init__(self, cfg: TeleopConfig, mapping: AxisMapping):
        self._speed = cfg.keyboard_speed
        self._mapping = mapping

    def pressed(self) -> set[str]:
        raise NotImplementedError

    def read(self, observation: Mapping[str, np.ndarray] | None = None) -> TeleopCommand:
        return keys_to_command(self.pressed(), self._speed, self._mapping)

    def reset(self) -> None:
        pass


class PynputKeyboard(_KeyboardBase):
    """Key presses and releases from pynput's global listener (needs a display)."""

    def __init__(self, cfg: TeleopConfig, mapping: AxisMapping, keyboard_module):
        super().__init__(cfg, mapping)
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._listener = keyboard_module.Listener(on_press=self._on_press, on_release=self._on_release)
        self._listener.start()

    @staticmethod
    def _name(key) -> str | None:
        char = getattr(key, "char", None)
        if char:
            return char.lower()
        return getattr(key, "name", None)

    def _on_press(self, key) -> None:
        name = self._name(key)
        if name:
            with self._lock:
                self._held.add(name)

    def _on_release(self, key) -> None:
        name = self._name(key)
        if name:
            with self._lock:
                self._held.discard(name)

    def pressed(self) -> set[str]:
        with self._lock:
            return set(self._held)

    def close(self) -> None:
        self._listener.stop()


def decode_terminal_bytes(data: bytes) -> list[str]:
    """Key names in a chunk read from a terminal; escape sequences (arrows, ...) are dropped."""
    names = []
    for byte in data:
        if byte == 0x1B:
            break
        if byte in (0x0D, 0x0A):
            names.append("enter")
        elif byte in (0x7F, 0x08):
            names.append("backspace")
        elif 0x20 <= byte < 0x7F:
            names.append(chr(byte).lower())
    return names


class TerminalKeyboard(_KeyboardBase):
    """Key presses read from a terminal file descriptor (cbreak mode while open)."""

    def __init__(self, cfg: TeleopConfig, mapping: AxisMapping, fd: int | None = None,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(cfg, mapping)
        self._fd = sys.stdin.fileno() if fd is None else fd
        self._hold_s = cfg.terminal_key_hold_s
        self._clock = clock
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._saved_mode = None
        if os.isatty(self._fd):
            import termios
            import tty

            self._saved_mode = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read_loop, name="terminal-keyboard", daemon=True)
        self._thread.start()

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.05)
            if not ready:
                continue
            data = os.read(self._fd, 64)
            if not data:
                return
            now = self._clock()
            with self._lock:
                for name in decode_terminal_bytes(data):
                    self._until[name] = now + self._hold_s

    def pressed(self) -> set[str]:
        now = self._clock()
        with self._lock:
            return {name for name, until in self._until.items() if until > now}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        if self._saved_mode is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved_mode)


def _stdin_is_terminal() -> bool:
    try:
        return os.isatty(sys.stdin.fileno())
    except (OSError, ValueError, AttributeError):  # closed or replaced stdin (io.UnsupportedOperation)
        return False


def has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_keyboard(cfg: TeleopConfig, *, action_frame: str = "ee",
                  notify: Callable[[str], None] = lambda m: print(m, file=sys.stderr)):
    """The keyboard device `teleop.keyboard_backend` asks for, falling back to the terminal."""
    mapping = AxisMapping.from_config(cfg, action_frame)
    backend = cfg.keyboard_backend
    if backend not in ("auto", "pynput", "terminal"):
        raise DeviceError(f"teleop.keyboard_backend must be auto, pynput or terminal, got '{backend}'")
    if backend in ("auto", "pynput"):
        reason = None
        if not has_display():
            reason = "no X display (DISPLAY is not set), so pynput cannot see the keyboard"
        else:
            try:
                from pynput import keyboard as keyboard_module
            except ImportError as exc:
                reason = f"pynput is not usable ({exc}); install it with pip install 'franka-rl[real]'"
        if reason is None:
            notify(HELP)
            return PynputKeyboard(cfg, mapping, keyboard_module)
        if backend == "pynput":
            raise DeviceError(f"keyboard: {reason}; use teleop.keyboard_backend=terminal")
        notify(f"keyboard: {reason}; reading keys from this terminal instead (keep it focused; "
               f"a press counts as held for {cfg.terminal_key_hold_s:.2f} s)")
    if not _stdin_is_terminal():
        raise DeviceError("keyboard: no X display and standard input is not a terminal; run the "
                          "command in a terminal, or use teleop.device=spacemouse")
    notify(HELP)
    return TerminalKeyboard(cfg, mapping)
