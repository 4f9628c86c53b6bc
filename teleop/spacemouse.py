"""3Dconnexion SpaceMouse over HID (the `hid` module of the hidapi package), parsed here.

HID input reports (first byte: report id; axes are signed 16-bit little-endian counts, about
±350 at full deflection):
- older devices (SpaceNavigator, SpaceMouse Pro, wired Compact): report 1 carries the
  translation x, y, z (6 bytes) and report 2 the rotation rx, ry, rz (6 bytes);
- newer ones (SpaceMouse Wireless, newer Compact): report 1 carries all six axes (12 bytes);
- report 3 carries the buttons as a little-endian bit mask (bit i = button i).
Raw axes point x right, y toward the operator, z down (a right-handed frame); this module turns
them into the device frame x right, y forward, z up (a half turn about x), rotations alike.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from teleop.config import BUTTON_ROLES, TeleopConfig
from teleop.devices import (
    AxisMapping,
    DeviceError,
    TeleopCommand,
    apply_dead_zone,
    roles_to_command,
)

VENDOR_IDS = (0x256F, 0x046D)  # 3Dconnexion; Logitech (3Dconnexion's former parent)
# Logitech-vendor products that are 3Dconnexion devices (SpaceNavigator, SpaceMouse Pro, ...).
_LOGITECH_3DCONNEXION = range(0xC600, 0xC640)
# Raw HID frame (x right, y toward the operator, z down) -> device frame (x right, y forward, z up).
_RAW_TO_DEVICE = np.array([1, -1, -1, 1, -1, -1], np.float32)


def _int16_le(data: Sequence[int], count: int) -> np.ndarray:
    raw = bytes(data[: 2 * count])
    if len(raw) < 2 * count:
        raise ValueError(f"report too short: {len(raw)} bytes for {count} axes")
    return np.frombuffer(raw, dtype="<i2").astype(np.int32)


@dataclass
class SpaceMouseState:
    """Latest raw axes (x, y, z, rx, ry, rz counts) and buttons, updated report by report."""

    axes: np.ndarray = field(default_factory=lambda: np.zeros(6, np.int32))
    buttons: tuple[bool, ...] = ()

    def feed(self, report: Sequence[int] | bytes) -> bool:
        """Apply one HID report; returns False for a report id this parser does not know."""
        report = bytes(report)
        if not report:
            return False
        report_id, data = report[0], report[1:]
        if report_id == 1 and len(data) >= 12:
            self.axes = _int16_le(data, 6)
        elif report_id == 1 and len(data) >= 6:
            self.axes = np.concatenate([_int16_le(data, 3), self.axes[3:]])
        elif report_id == 2 and len(data) >= 6:
            self.axes = np.concatenate([self.axes[:3], _int16_le(data, 3)])
        elif report_id == 3 and data:
            mask = int.from_bytes(bytes(data), "little")
            self.buttons = tuple(bool(mask >> i & 1) for i in range(8 * len(data)))
        else:
            return False
        return True

    def device_twist(self, full_scale: float, dead_zone: float) -> np.ndarray:
        """Axes in the device frame, normalised to [-1, 1], dead zone applied."""
        return apply_dead_zone(self.axes.astype(np.float32) * _RAW_TO_DEVICE / full_scale, dead_zone)


def parse_reports(reports: Iterable[Sequence[int] | bytes]) -> SpaceMouseState:
    """Replay a recorded sequence of reports; the state after the last one."""
    state = SpaceMouseState()
    for report in reports:
        state.feed(report)
    return state


def is_spacemouse(info: Mapping) -> bool:
    vendor, product = info.get("vendor_id"), info.get("product_id")
    if vendor == 0x256F:
        return True
    if vendor == 0x046D:
        text = f"{info.get('manufacturer_string') or ''} {info.get('product_string') or ''}".lower()
        return product in _LOGITECH_3DCONNEXION or "space" in text or "3dconnexion" in text
    return False


def find_spacemice(hid_module=None) -> list[dict]:
    """hidapi's enumeration, filtered to 3Dconnexion devices (multi-axis interface first)."""
    if hid_module is None:
        import hid as hid_module
    found = [info for vendor in VENDOR_IDS for info in hid_module.enumerate(vendor, 0) if is_spacemouse(info)]
    # Composite devices expose several interfaces; the one with usage page 1 / usage 8
    # (generic desktop / multi-axis controller) carries the motion reports.
    return sorted(found, key=lambda i: (i.get("usage_page"), i.get("usage")) != (1, 8))


class SpaceMouse:
    """A SpaceMouse read on a background thread; `read()` returns the newest command at once."""

    def __init__(self, handle, cfg: TeleopConfig, mapping: AxisMapping, name: str = "SpaceMouse"):
        for role in cfg.spacemouse_buttons:
            if role not in BUTTON_ROLES:
                raise DeviceError(f"teleop.spacemouse_buttons: unknown role '{role}' (one of {BUTTON_ROLES})")
        self._handle = handle
        self._cfg = cfg
        self._mapping = mapping
        self.name = name
        self._state = SpaceMouseState()
        self._lock = threading.Lock()
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read_loop, name="spacemouse", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, cfg: TeleopConfig, *, action_frame: str = "ee", hid_module=None) -> SpaceMouse:
        if hid_module is None:
            try:
                import hid as hid_module
            except ImportError as exc:
                raise DeviceError(f"the SpaceMouse needs hidapi (pip install hidapi): {exc}") from None
        mapping = AxisMapping.from_config(cfg, action_frame)
        handle = hid_module.device()
        try:
            if cfg.spacemouse_path:
                handle.open_path(cfg.spacemouse_path.encode())
                name = cfg.spacemouse_path
            else:
                devices = find_spacemice(hid_module)
                if not devices:
                    raise DeviceError(
                        "no SpaceMouse found (3Dconnexion USB vendor ids 0x256f / 0x046d). Plug it in "
                        "(a wireless one needs its receiver), make /dev/hidraw* readable (udev rule in "
                        "docs/teleop.md), or use teleop.device=keyboard"
                    )
                handle.open_path(devices[0]["path"])
                name = devices[0].get("product_string") or "SpaceMouse"
        except OSError as exc:
            raise DeviceError(
                f"cannot open the SpaceMouse ({exc}); check the permissions of /dev/hidraw* "
                "(udev rule in docs/teleop.md) and that no other program (3DxWare, spacenavd) holds it"
            ) from None
        return cls(handle, cfg, mapping, name)

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            try:
                report = self._handle.read(64, 50)
            except (OSError, ValueError) as exc:
                with self._lock:
                    self._error = str(exc) or type(exc).__name__
                return
            if report:
                with self._lock:
                    self._state.feed(report)

    def read(self, observation: Mapping[str, np.ndarray] | None = None) -> TeleopCommand:
        with self._lock:
            if self._error is not None:
                raise DeviceError(f"lost the SpaceMouse ({self._error}); reconnect it and restart")
            twist = self._state.device_twist(self._cfg.spacemouse_full_scale, self._cfg.dead_zone)
            buttons = self._state.buttons
        roles = {role for role, down in zip(self._cfg.spacemouse_buttons, buttons, strict=False) if down}
        return roles_to_command(self._mapping.apply(twist), roles, buttons)

    def reset(self) -> None:
        pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        self._handle.close()
