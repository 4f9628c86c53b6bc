"""Configuration of teleoperation devices and of the recording commands."""

from __future__ import annotations

from dataclasses import dataclass, field

from robot_env.errors import ConfigError

DEVICE_CHOICES = ("spacemouse", "keyboard", "scripted", "replay", "none")
BUTTON_ROLES = ("gripper_close", "gripper_open", "success", "failure", "none")
KEYBOARD_BACKENDS = ("auto", "pynput", "terminal")


@dataclass
class TeleopConfig:
    # "spacemouse", "keyboard", "scripted" (the twin's expert; sim only), "replay" (replays the
    # actions of recorded episodes, headless: `replay_path`) or "none".
    device: str = "scripted"
    # Steps the intervention keeps control after the device goes quiet (the arm holds still),
    # so the policy does not snatch the arm back the instant the operator lets go.
    hold_over_steps: int = 3
    # Device deflections below this fraction of full scale count as zero.
    dead_zone: float = 0.05
    # Multiplies device twists (after mapping) before they become actions in [-1, 1].
    translation_gain: float = 1.0
    rotation_gain: float = 1.0
    # Device frame -> action frame: action axis i = axis_signs[i] * device axis axis_map[i].
    # The device frame is x right, y forward, z up, then rotations about those axes, as seen by
    # an operator behind the robot facing along the base +x axis. Empty lists derive the mapping
    # from env.action_frame for that operator position (docs/teleop.md).
    axis_map: list[int] = field(default_factory=list)
    axis_signs: list[float] = field(default_factory=list)
    # SpaceMouse: HID path (empty: the first 3Dconnexion device found) and full-scale count.
    spacemouse_path: str = ""
    spacemouse_full_scale: float = 350.0
    # Role of each SpaceMouse button, in order: gripper_close, gripper_open, success, failure, none.
    spacemouse_buttons: list[str] = field(default_factory=lambda: ["gripper_close", "gripper_open"])
    # Keyboard: "auto" (pynput with an X display, else the terminal), "pynput" or "terminal".
    keyboard_backend: str = "auto"
    # Deflection of a held key (fraction of full scale).
    keyboard_speed: float = 0.5
    # Terminal input has no key-release events: a key press counts as held for this long
    # (longer than the terminal's auto-repeat delay, so a held key moves smoothly).
    terminal_key_hold_s: float = 0.55
    # Scripted device: Gaussian action noise of the twin's expert (std, in action units).
    scripted_noise: float = 0.1
    # Replay device: an episode file or directory (this project's format) whose recorded actions
    # are replayed in order, one episode per env episode; at the end of each it marks the episode
    # as the recording was (success or failure), as an operator would.
    replay_path: str = ""


@dataclass
class RecordConfig:
    # Where record-demos writes episodes (empty: <output_dir>/demos).
    demos_dir: str = ""
    # Stop after this many successful episodes; failures are kept too, labelled as such.
    num_successes: int = 20
    # Give up after this many episodes in all (0: no limit).
    max_episodes: int = 200
    # Where record-rewards writes labelled frames (empty: <output_dir>/reward_frames).
    rewards_dir: str = ""
    # record-rewards stops when it holds at least this many frames of each label.
    reward_positives: int = 200
    reward_negatives: int = 500
    # record-rewards in the twin: steps kept after the task succeeds (the peg stays in the hole,
    # jittered by the expert's noise), which is where the positive frames come from.
    reward_steps_after_success: int = 25
    # Print the live status line at most this often (s).
    status_interval_s: float = 0.25


def validate_teleop_config(teleop: TeleopConfig, record: RecordConfig) -> None:
    """Raise ConfigError naming the first `teleop.*` or `record.*` value that cannot work."""
    checks = [
        (teleop.device in DEVICE_CHOICES, f"teleop.device must be one of {DEVICE_CHOICES}, got '{teleop.device}'"),
        (teleop.hold_over_steps >= 0, f"teleop.hold_over_steps must be >= 0, got {teleop.hold_over_steps}"),
        (0 <= teleop.dead_zone < 1, f"teleop.dead_zone must be in [0, 1), got {teleop.dead_zone}"),
        (teleop.translation_gain > 0, f"teleop.translation_gain must be > 0, got {teleop.translation_gain}"),
        (teleop.rotation_gain > 0, f"teleop.rotation_gain must be > 0, got {teleop.rotation_gain}"),
        (not teleop.axis_map or sorted(teleop.axis_map) == list(range(6)),
         f"teleop.axis_map must be empty or a permutation of 0..5, got {list(teleop.axis_map)}"),
        (not teleop.axis_signs or (len(teleop.axis_signs) == 6 and all(s in (-1, 1) for s in teleop.axis_signs)),
         f"teleop.axis_signs must be empty or six values of 1 or -1, got {list(teleop.axis_signs)}"),
        (teleop.spacemouse_full_scale > 0,
         f"teleop.spacemouse_full_scale must be > 0, got {teleop.spacemouse_full_scale}"),
        (all(role in BUTTON_ROLES for role in teleop.spacemouse_buttons),
         f"teleop.spacemouse_buttons: every role must be one of {BUTTON_ROLES}, got {list(teleop.spacemouse_buttons)}"),
        (teleop.keyboard_backend in KEYBOARD_BACKENDS,
         f"teleop.keyboard_backend must be one of {KEYBOARD_BACKENDS}, got '{teleop.keyboard_backend}'"),
        (0 < teleop.keyboard_speed <= 1, f"teleop.keyboard_speed must be in (0, 1], got {teleop.keyboard_speed}"),
        (teleop.terminal_key_hold_s > 0, f"teleop.terminal_key_hold_s must be > 0, got {teleop.terminal_key_hold_s}"),
        (teleop.scripted_noise >= 0, f"teleop.scripted_noise must be >= 0, got {teleop.scripted_noise}"),
        (record.num_successes >= 1, f"record.num_successes must be >= 1, got {record.num_successes}"),
        (record.max_episodes >= 0, f"record.max_episodes must be >= 0 (0 = no limit), got {record.max_episodes}"),
        (record.reward_positives >= 0, f"record.reward_positives must be >= 0, got {record.reward_positives}"),
        (record.reward_negatives >= 0, f"record.reward_negatives must be >= 0, got {record.reward_negatives}"),
        (record.reward_steps_after_success >= 0,
         f"record.reward_steps_after_success must be >= 0, got {record.reward_steps_after_success}"),
        (record.status_interval_s > 0, f"record.status_interval_s must be > 0, got {record.status_interval_s}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
