"""Teleoperation: input devices, the intervention wrapper, and the recording loops.

See docs/teleop.md.
"""

from teleop.config import RecordConfig, TeleopConfig
from teleop.devices import (
    IDLE,
    AxisMapping,
    DeviceError,
    NullDevice,
    TeleopCommand,
    TeleopDevice,
)
from teleop.intervention import InterventionWrapper
from teleop.registry import DEVICE_CHOICES, make_device
from teleop.replay import ReplayDevice
from teleop.scripted import ExpertDevice, ScriptedDevice

__all__ = [
    "DEVICE_CHOICES",
    "IDLE",
    "AxisMapping",
    "DeviceError",
    "ExpertDevice",
    "InterventionWrapper",
    "NullDevice",
    "RecordConfig",
    "ReplayDevice",
    "ScriptedDevice",
    "TeleopCommand",
    "TeleopConfig",
    "TeleopDevice",
    "make_device",
]
