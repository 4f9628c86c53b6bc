"""Recorded data: the episode store, the replay buffer, and importers/exporters (SERL, Minari).

See docs/data.md for the on-disk format and the batch layout.
"""

from agent.data.episodes import (
    SOURCES,
    CorruptEpisodeError,
    Episode,
    EpisodeRecorder,
    EpisodeStore,
    load_episode,
    make_metadata,
    write_episode_file,
)
from agent.data.replay_buffer import FEATURES_SUFFIX, ReplayBuffer

__all__ = [
    "FEATURES_SUFFIX",
    "SOURCES",
    "CorruptEpisodeError",
    "Episode",
    "EpisodeRecorder",
    "EpisodeStore",
    "ReplayBuffer",
    "load_episode",
    "make_metadata",
    "write_episode_file",
]
