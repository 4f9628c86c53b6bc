"""A restarted actor re-sends what its earlier incarnations recorded but the learner never made durable.

An actor process holds every chunk in memory until the learner has it in a checkpoint; a SIGKILL
(or a power cut) loses that memory, but not the episode files: each one is written before its last
chunk is sent, and its metadata names the stream (`<actor id>/<incarnation>`), the sequence number
of its first chunk and each chunk's length. So a new actor process can rebuild exactly the chunks
an earlier incarnation sent, with their sequence numbers, and speak for that stream again (a
`recovery` HELLO): the learner's exactly-once bookkeeping drops what it already holds and stores
the rest, and the recovery client holds them until they are durable.

The episode in progress at the kill was never written, so it is neither re-sent nor stored (the
learner only stores an episode once its last chunk arrives). `.durable.json` in the episode folder
remembers, per incarnation, the last chunk known durable, so a restart does not handshake again
for streams already complete.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.data.episodes import Episode, EpisodeStore, load_episode
from agent.transport.client import ActorClient
from agent.transport.protocol import TransitionChunk

log = logging.getLogger("agent.actor")

DURABLE_LOG = ".durable.json"


def chunks_from_episode(episode: Episode, metadata: dict[str, Any]) -> list[TransitionChunk]:
    """The chunks the actor sent for `episode`, rebuilt from the file (same boundaries, same values)."""
    lengths = [int(n) for n in metadata["chunk_steps"]]
    if sum(lengths) != len(episode) or any(n < 1 for n in lengths):
        raise ValueError(f"chunk lengths {lengths} do not add up to the episode's {len(episode)} steps")
    success = episode.info.get("success", np.zeros(len(episode), bool))
    chunks, start = [], 0
    for n in lengths:
        stop = start + n
        chunks.append(TransitionChunk(
            episode=int(metadata["episode_index"]), step=start,
            actions=np.asarray(episode.actions[start:stop], np.float32),
            rewards=np.asarray(episode.rewards[start:stop], np.float32),
            terminated=np.asarray(episode.terminated[start:stop], bool),
            truncated=np.asarray(episode.truncated[start:stop], bool),
            intervened=np.asarray(episode.intervened[start:stop], bool),
            success=np.asarray(success[start:stop], bool),
            next_observations={k: v[start + 1:stop + 1] for k, v in episode.observations.items()},
            first_observation={k: v[0] for k, v in episode.observations.items()} if start == 0 else None,
            source=str(metadata.get("source", "policy"))))
        start = stop
    return chunks


@dataclass
class RecordedStream:
    """The episode files of one earlier incarnation, in sequence order."""

    incarnation: str
    files: list[tuple[int, int, Path, dict[str, Any]]] = field(default_factory=list)  # (first, last, path, meta)

    @property
    def last_sequence(self) -> int:
        return self.files[-1][1] if self.files else 0


class DurableLog:
    """`.durable.json`: incarnation -> last chunk sequence the learner reported durable."""

    def __init__(self, directory: Path):
        self.path = directory / DURABLE_LOG
        try:
            loaded = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            loaded = {}
        self.marks: dict[str, int] = {k: v for k, v in loaded.items() if isinstance(k, str) and
                                      isinstance(v, int)} if isinstance(loaded, dict) else {}

    def record(self, incarnation: str, durable_through: int) -> None:
        if durable_through <= self.marks.get(incarnation, 0):
            return
        self.marks[incarnation] = durable_through
        temp = self.path.with_suffix(f".tmp-{os.getpid()}")
        try:
            temp.write_text(json.dumps(self.marks))
            os.replace(temp, self.path)
        except OSError as exc:  # only a later restart's extra handshake depends on it
            log.warning("could not update %s: %s", self.path, exc)


def earlier_streams(store: EpisodeStore, actor_id: str, current_incarnation: str,
                    durable: DurableLog) -> list[RecordedStream]:
    """Earlier incarnations of `actor_id` in `store` with episodes not known durable, oldest first."""
    streams: dict[str, RecordedStream] = {}
    for path, metadata in store.metadata():
        actor, _, incarnation = str(metadata.get("stream", "")).partition("/")
        first, lengths = metadata.get("first_sequence"), metadata.get("chunk_steps")
        if (actor != actor_id or not incarnation or incarnation == current_incarnation
                or not isinstance(first, int) or not isinstance(lengths, list) or not lengths):
            continue
        streams.setdefault(incarnation, RecordedStream(incarnation)).files.append(
            (first, first + len(lengths) - 1, path, metadata))
    found = []
    for stream in streams.values():
        stream.files.sort(key=lambda f: f[0])
        if stream.last_sequence > durable.marks.get(stream.incarnation, 0):
            found.append(stream)
    return sorted(found, key=lambda s: s.files[0][3].get("started_at", 0.0))


def pending_chunks(stream: RecordedStream, durable_through: int) -> tuple[int, list[TransitionChunk], str]:
    """(first sequence, chunks after `durable_through`, problem) from the stream's files. The chunks
    must follow `durable_through` without a gap (an episode whose file is missing would leave the
    learner waiting for it forever): they stop at the first gap, and `problem` says why."""
    chunks: list[TransitionChunk] = []
    next_sequence = durable_through + 1
    for first, last, path, metadata in stream.files:
        if last <= durable_through:
            continue
        if first != next_sequence:
            return durable_through + 1, chunks, (f"chunks {next_sequence}..{first - 1} are in no episode file "
                                                 f"(before {path.name})")
        try:
            chunks.extend(chunks_from_episode(load_episode(path), metadata))
        except Exception as exc:
            return durable_through + 1, chunks, f"{path.name} cannot be re-sent ({type(exc).__name__}: {exc})"
        next_sequence = last + 1
    return durable_through + 1, chunks, ""


def recover_stream(stream: RecordedStream, make_client: Callable[[str], ActorClient], durable: DurableLog,
                   stopping: Callable[[], bool], report: Callable[[str], None]) -> bool:
    """Speak for `stream` until the learner holds its recorded chunks durably; returns whether it did.
    Gives up (False) when the learner refuses (it never knew the stream) or on `stopping()`."""
    client = make_client(stream.incarnation)
    client.start()
    try:
        while client.state != "up":
            if client.state == "refused":
                report(f"episodes of earlier incarnation {stream.incarnation} not re-sent: {client.refusal}")
                return False
            if stopping():
                return False
            time.sleep(0.05)
        first, chunks, problem = pending_chunks(stream, client.durable_through)
        if problem:
            report(f"earlier incarnation {stream.incarnation}: {problem}; re-sending the {len(chunks)} chunk(s) "
                   "before it")
        if not chunks:
            durable.record(stream.incarnation, stream.last_sequence if not problem else client.durable_through)
            return not problem
        client.preload(first, chunks)
        last = first + len(chunks) - 1
        steps = sum(len(c) for c in chunks)
        report(f"re-sending {len(chunks)} chunk(s) ({steps} steps) that earlier incarnation {stream.incarnation} "
               "recorded but the learner had not checkpointed")
        while client.durable_through < last:
            if stopping() or client.state == "refused":
                return False
            time.sleep(0.05)
        durable.record(stream.incarnation, last if not problem else client.durable_through)
        report(f"earlier incarnation {stream.incarnation}: its {steps} re-sent steps are in a learner checkpoint")
        return not problem
    finally:
        client.close()


def recover_all(streams: Iterable[RecordedStream], **kwargs: Any) -> int:
    """Recover each stream in turn; returns how many are complete."""
    return sum(recover_stream(stream, **kwargs) for stream in streams)
