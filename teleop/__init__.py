"""Teleoperation: input devices, the intervention wrapper, and the recording loops.

See docs/teleop.md.
"""

from teleop.config import RecordConfig, TeleopConfig
from teleop.devices import (
    DEVICE_CHOICES,
    IDLE,
    AxisMapping,
    DeviceError,
    NullDevice,
    TeleopCommand,
    TeleopDevice,
    make_device,
)
from teleop.intervention import InterventionWrapper
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
    "ScriptedDevice",
    "TeleopCommand",
    "TeleopConfig",
    "TeleopDevice",
    "make_device",
]
