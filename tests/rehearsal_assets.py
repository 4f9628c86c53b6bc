"""What a rehearsal of the hardware runbook against franky-sim needs besides the arm: two video
files that stand in for the wrist cameras, and an episode folder for the headless `replay` teleop
device (docs/hardware.md, "Rehearse the runbook against franky-sim").

    python tests/rehearsal_assets.py rehearsal

writes rehearsal/wrist_1.avi, rehearsal/wrist_2.avi and rehearsal/script/ (one short episode that
nudges the peg 1 mm per step along x and marks a success on its last step).
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

# 10 minutes at the rehearsal's 10 fps: a video file plays once, and the longest command (the
# actor) must not outlive it.
VIDEO_FRAMES = 6000
VIDEO_FPS = 10.0
VIDEO_SIZE = (64, 48)  # width, height: resized to env.image_* by the camera
SCRIPT_STEPS = 4


def write_video(path: Path, tint: tuple[int, int, int], frames: int = VIDEO_FRAMES) -> Path:
    """Frames of a flat colour with a moving bright bar (so consecutive frames differ)."""
    width, height = VIDEO_SIZE
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), VIDEO_FPS, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    for index in range(frames):
        bgr = np.empty((height, width, 3), np.uint8)
        bgr[:] = tint
        column = index % width
        bgr[:, column : column + 4] = 255
        writer.write(bgr)
    writer.release()
    return path


def write_replay_script(directory: Path, steps: int = SCRIPT_STEPS) -> Path:
    """One successful episode in this project's format: +x actions, success on the last step."""
    from agent.data.episodes import EpisodeRecorder, EpisodeStore, make_metadata

    recorder = EpisodeRecorder(EpisodeStore(directory, create=True))
    observation = {"state": np.zeros(19, np.float32)}
    recorder.start(observation, make_metadata(task="rehearsal script", source="teleop"))
    for step in range(steps):
        last = step == steps - 1
        action = np.array([0.05, 0.0, 0.0, 0.0, 0.0, 0.0], np.float32)
        recorder.add(action, float(last), observation, last, False, False, {"success": last})
    return directory


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/rehearsal_assets.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    write_video(out / "wrist_1.avi", (40, 80, 160))
    write_video(out / "wrist_2.avi", (160, 80, 40))
    write_replay_script(out / "script")
    print(f"wrote {out / 'wrist_1.avi'}, {out / 'wrist_2.avi'} and {out / 'script'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
