"""Opening the device `teleop.device` names. The device modules import `teleop.devices` (the
command type and the device protocol); this module imports them, so nothing imports back."""

from __future__ import annotations

from typing import Any

from teleop.config import DEVICE_CHOICES, TeleopConfig
from teleop.devices import DeviceError, NullDevice, TeleopDevice


def make_device(cfg: TeleopConfig, *, action_frame: str = "ee", env: Any = None, seed: int = 0) -> TeleopDevice:
    """Open the device `cfg.device` names. The scripted device needs the (twin) env it drives."""
    if cfg.device == "none":
        return NullDevice()
    if cfg.device == "spacemouse":
        from teleop.spacemouse import SpaceMouse

        return SpaceMouse.open(cfg, action_frame=action_frame)
    if cfg.device == "keyboard":
        from teleop.keyboard import open_keyboard

        return open_keyboard(cfg, action_frame=action_frame)
    if cfg.device == "scripted":
        from teleop.scripted import ExpertDevice

        if env is None:
            raise DeviceError("the scripted device replays the twin's expert and needs the env it drives")
        return ExpertDevice(env, noise=cfg.scripted_noise, seed=seed)
    if cfg.device == "replay":
        from teleop.replay import ReplayDevice

        return ReplayDevice.open(cfg.replay_path)
    raise DeviceError(f"teleop.device must be one of {DEVICE_CHOICES}, got '{cfg.device}'")


__all__ = ["DEVICE_CHOICES", "make_device"]
