"""A headless device: replays the actions of recorded episodes, as an operator would drive them.

Useful wherever no person is at the controls: rehearsing the hardware runbook against a simulated
arm, re-driving a recorded demonstration on a new cell, or scripting a recording. Each env episode
takes the next recorded episode (cycling), replays its actions step by step (engaged throughout, so
the policy never acts), and marks the outcome where the recording had it: a success mark on the
steps the recording labelled successful (`frame_info/success_label` if recorded, else
`info/success`, else the last step of a successful episode), a failure mark on the last step of a
failed one. When the recording runs out before the env ends the episode, the device holds still
and marks a failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from teleop.devices import IDLE, DeviceError, TeleopCommand
from teleop.scripted import action_to_command


class ReplayDevice:
    def __init__(self, episodes: list[tuple[np.ndarray, np.ndarray, bool]]):
        """`episodes`: (actions (T, A), per-step success marks (T,), succeeded) per episode."""
        if not episodes:
            raise DeviceError("the replay device has no episodes to replay")
        self._episodes = episodes
        self._index = -1
        self._step = 0

    @classmethod
    def open(cls, path: str) -> ReplayDevice:
        """Episodes from an episode file or directory (this project's format, in recorded order)."""
        from agent.data.episodes import CorruptEpisodeError, EpisodeStore, load_episode

        if not path:
            raise DeviceError("teleop.device=replay needs teleop.replay_path: an episode file or directory whose "
                              "actions to replay")
        source = Path(path)
        try:
            if source.is_dir():
                recorded = list(EpisodeStore(source).episodes())
            elif source.is_file():
                recorded = [load_episode(source)]
            else:
                raise DeviceError(f"teleop.replay_path {source} does not exist: give an episode file or directory")
        except CorruptEpisodeError as exc:
            raise DeviceError(f"teleop.replay_path: {exc}") from None
        episodes = []
        for episode in recorded:
            steps = len(episode)
            if steps == 0:
                continue
            if "success_label" in episode.frame_info:
                marks = np.asarray(episode.frame_info["success_label"], bool)[1:]
            elif "success" in episode.info:
                marks = np.asarray(episode.info["success"], bool)
            else:
                marks = np.zeros(steps, bool)
                marks[-1] = episode.success
            episodes.append((np.asarray(episode.actions, np.float32), marks, bool(episode.success)))
        if not episodes:
            raise DeviceError(f"teleop.replay_path {source} holds no episode with steps to replay")
        return cls(episodes)

    def read(self, observation: Mapping[str, np.ndarray] | None = None) -> TeleopCommand:
        actions, marks, succeeded = self._episodes[self._index % len(self._episodes)]
        step = self._step
        self._step += 1
        if step >= len(actions):
            return replace(IDLE, engaged=True, failure=True)
        last = step == len(actions) - 1
        command = replace(action_to_command(actions[step]), engaged=True, success=bool(marks[step]))
        if last and not succeeded:
            command = replace(command, failure=True)
        return command

    def reset(self) -> None:
        self._index += 1
        self._step = 0

    def close(self) -> None:
        pass


__all__ = ["ReplayDevice"]
