"""SpaceMouse: the HID report parser on recorded byte sequences of both report styles, the dead
zone, the axis mapping, and opening through hidapi's interface (a fake module: no hardware)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from teleop.config import TeleopConfig
from teleop.devices import AxisMapping, DeviceError, apply_dead_zone, default_axis_mapping
from teleop.spacemouse import SpaceMouse, SpaceMouseState, find_spacemice, parse_reports

# A SpaceNavigator-style stream (separate translation / rotation reports, then buttons):
# push right and toward the operator, then twist, then press button 0, release everything.
OLD_STYLE = [
    "01 2c 01 a8 fe 00 00",  # T: x=+300, y=-344, z=0
    "02 00 00 00 00 5e 01",  # R: rx=0, ry=0, rz=+350
    "01 2c 01 a8 fe 0a 00",  # T: z=+10
    "03 01",                 # button 0 down
]
# A SpaceMouse Wireless-style stream: all six axes in report 1 (12 bytes), buttons in report 3.
NEW_STYLE = [
    "01 00 00 00 00 00 00 00 00 00 00 00 00",
    "01 9c ff 5e 01 a2 fe 01 00 ff ff 10 00",  # x=-100, y=+350, z=-350, rx=1, ry=-1, rz=16
    "03 02 00",                                  # button 1 down
]


def hexes(lines):
    return [bytes.fromhex(line) for line in lines]


def test_old_style_reports():
    state = parse_reports(hexes(OLD_STYLE))
    np.testing.assert_array_equal(state.axes, [300, -344, 10, 0, 0, 350])
    assert state.buttons[:2] == (True, False) and len(state.buttons) == 8
    # Rotation-only update keeps the translation, and vice versa.
    state.feed(bytes.fromhex("02 01 00 02 00 03 00"))
    np.testing.assert_array_equal(state.axes, [300, -344, 10, 1, 2, 3])


def test_new_style_reports():
    state = parse_reports(hexes(NEW_STYLE))
    np.testing.assert_array_equal(state.axes, [-100, 350, -350, 1, -1, 16])
    assert state.buttons[:3] == (False, True, False) and len(state.buttons) == 16


def test_unknown_and_short_reports_are_ignored():
    state = SpaceMouseState()
    assert not state.feed(bytes.fromhex("17 01 02"))
    assert not state.feed(b"")
    assert not state.feed(bytes.fromhex("01 01"))
    np.testing.assert_array_equal(state.axes, 0)


def test_device_frame_and_dead_zone():
    state = parse_reports(hexes(NEW_STYLE))
    twist = state.device_twist(full_scale=350.0, dead_zone=0.1)
    # raw y toward the operator / z down -> device y forward / z up; the small axes vanish.
    expected_x = -(100 / 350 - 0.1) / 0.9
    np.testing.assert_allclose(twist, [expected_x, -1.0, 1.0, 0.0, 0.0, 0.0], atol=1e-6)


def test_dead_zone_is_continuous():
    values = np.linspace(-1.2, 1.2, 241)
    out = apply_dead_zone(values, 0.2)
    assert np.all(out[np.abs(values) <= 0.2] == 0) and out.max() == 1.0 and out.min() == -1.0
    assert np.all(np.diff(out) >= 0)


def test_axis_mapping_to_action_frames():
    forward = np.array([0, 1, 0, 0, 0, 0], np.float32)  # operator pushes away from themselves
    up = np.array([0, 0, 1, 0, 0, 0], np.float32)
    right = np.array([1, 0, 0, 0, 0, 0], np.float32)
    base = AxisMapping(*map(tuple, default_axis_mapping("base")))
    np.testing.assert_array_equal(base.apply(forward), [1, 0, 0, 0, 0, 0])  # base +x
    np.testing.assert_array_equal(base.apply(right), [0, -1, 0, 0, 0, 0])   # base -y
    np.testing.assert_array_equal(base.apply(up), [0, 0, 1, 0, 0, 0])
    ee = AxisMapping(*map(tuple, default_axis_mapping("ee")))  # peg down: ee z = -base z
    np.testing.assert_array_equal(ee.apply(up), [0, 0, -1, 0, 0, 0])
    np.testing.assert_array_equal(ee.apply(right), [0, 1, 0, 0, 0, 0])
    custom = AxisMapping.from_config(TeleopConfig(axis_map=[0, 1, 2, 3, 4, 5], axis_signs=[-1] * 6,
                                                  translation_gain=0.5))
    np.testing.assert_allclose(custom.apply(right), [-0.5, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="permutation"):
        AxisMapping(index=(0, 0, 1, 2, 3, 4))


class FakeHidDevice:
    """hidapi's `hid.device` over a list of recorded reports."""

    def __init__(self, reports):
        self.reports = list(reports)
        self.opened = None
        self.closed = False

    def open_path(self, path):
        self.opened = path

    def read(self, size, timeout_ms):
        if self.reports:
            return list(self.reports.pop(0))
        time.sleep(timeout_ms / 1000)
        return []

    def close(self):
        self.closed = True


class FakeHid:
    def __init__(self, infos, reports):
        self.infos = infos
        self.device_instance = FakeHidDevice(reports)

    def enumerate(self, vendor_id=0, product_id=0):
        return [i for i in self.infos if vendor_id in (0, i["vendor_id"])]

    def device(self):
        return self.device_instance


INFOS = [
    {"vendor_id": 0x046D, "product_id": 0xC52B, "path": b"/dev/hidraw0", "product_string": "USB Receiver",
     "manufacturer_string": "Logitech", "usage_page": 1, "usage": 6},
    {"vendor_id": 0x256F, "product_id": 0xC62E, "path": b"/dev/hidraw2", "product_string": "SpaceMouse Wireless",
     "manufacturer_string": "3Dconnexion", "usage_page": 12, "usage": 1},
    {"vendor_id": 0x256F, "product_id": 0xC62E, "path": b"/dev/hidraw3", "product_string": "SpaceMouse Wireless",
     "manufacturer_string": "3Dconnexion", "usage_page": 1, "usage": 8},
]


def test_open_reads_reports_on_a_thread():
    hid = FakeHid(INFOS, hexes(NEW_STYLE))
    assert [i["path"] for i in find_spacemice(hid)] == [b"/dev/hidraw3", b"/dev/hidraw2"]  # not the mouse
    cfg = TeleopConfig(device="spacemouse", dead_zone=0.0, spacemouse_buttons=["gripper_close", "success"])
    mouse = SpaceMouse.open(cfg, action_frame="base", hid_module=hid)
    try:
        assert hid.device_instance.opened == b"/dev/hidraw3"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not mouse.read().success:
            time.sleep(0.01)
        command = mouse.read()
        assert command.success and command.gripper is None and command.active
        # device (x=-100/350, y=-1, z=+1) -> base frame (forward, -right, up)
        np.testing.assert_allclose(command.twist[:3], [-1.0, 100 / 350, 1.0], atol=1e-6)
    finally:
        mouse.close()
    assert hid.device_instance.closed


def test_missing_spacemouse_is_one_clear_error():
    with pytest.raises(DeviceError, match="no SpaceMouse found.*teleop.device=keyboard"):
        SpaceMouse.open(TeleopConfig(device="spacemouse"), hid_module=FakeHid(INFOS[:1], []))


def test_lost_device_is_reported():
    class Broken(FakeHidDevice):
        def read(self, size, timeout_ms):
            raise OSError("read error")

    hid = FakeHid(INFOS, [])
    hid.device_instance = Broken([])
    mouse = SpaceMouse.open(TeleopConfig(device="spacemouse"), hid_module=hid)
    time.sleep(0.1)
    with pytest.raises(DeviceError, match="lost the SpaceMouse"):
        mouse.read()
    mouse.close()
