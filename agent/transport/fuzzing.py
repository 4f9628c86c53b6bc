"""A seeded corpus of hostile messages and a harness that runs it against a live learner transport.

Used by `tests/test_transport_fuzz.py` (a few hundred cases) and `benchmarks/transport_fuzz.py`
(thousands). The corpus has two parts:

- **triggers**: one case per known way to break a parser or poison a buffer (a 5 000-digit
  integer, `[` nested 100 000 deep, a shape `[0, 2**70]` with an empty frame, float
  `terminated`, actions of 1e30, a float64 reward of 1e300, a uint64 reward, a state of 3e38,
  NaN/inf, forbidden dtypes, bool bytes other than 0/1, oversized headers, bad HELLOs, messages
  of the learner's types, ...);
- **mutations**: random edits of valid TRANSITIONS / HELLO / HEARTBEAT messages (bit flips in the
  header or the data, a header field replaced by a hostile value, frames dropped, repeated,
  truncated or swapped, random bytes).

The harness (`run_corpus`) starts a `LearnerServer` on loopback, a minimal learner that stores
what it receives in a real `ReplayBuffer` exactly as `Learner.store` orders it (and checks each
stored chunk independently of the transport's own checks), a hostile DEALER that has shaken
hands as actor "fuzz", and a probe connection whose heartbeat must be answered after every case
(else: a hang). At the end a real `ActorClient` must still get a chunk stored.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import zmq

from agent.data.replay_buffer import ReplayBuffer
from agent.process_config import TransportConfig
from agent.returns import RewardShaping
from agent.transport.client import ActorClient
from agent.transport.protocol import (
    PREFIX,
    PROTOCOL_VERSION,
    Message,
    MessageType,
    TransitionChunk,
    encode,
    spec_to_json,
)
from agent.transport.server import LearnerServer

SPEC = {"state": ((5,), np.dtype(np.float32)), "wrist_1": ((8, 8, 3), np.dtype(np.uint8))}
ACTION_DIM = 3
CONFIG_HASH = "fuzz-config"
MAX_ABS_OBSERVATION = 1e6

Frames = list[bytes]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ valid messages


def valid_chunk(rng: np.random.Generator, steps: int = 1, step: int = 0, episode: int = 0) -> TransitionChunk:
    terminated = np.zeros(steps, bool)
    terminated[-1] = True
    obs = {"state": rng.uniform(-1, 1, (steps, 5)).astype(np.float32),
           "wrist_1": rng.integers(0, 256, (steps, 8, 8, 3), dtype=np.uint8)}
    first = {"state": rng.uniform(-1, 1, 5).astype(np.float32),
             "wrist_1": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)} if step == 0 else None
    return TransitionChunk(episode, step, rng.uniform(-1, 1, (steps, ACTION_DIM)).astype(np.float32),
                           rng.integers(0, 2, steps).astype(np.float32), terminated, np.zeros(steps, bool),
                           np.zeros(steps, bool), terminated.copy(), obs, first)


def hello_fields(incarnation: str = "fuzz-1", **extra) -> dict:
    return {"incarnation": incarnation, "config_hash": CONFIG_HASH, "protocol_version": PROTOCOL_VERSION,
            "action_dim": ACTION_DIM, "observation_spec": spec_to_json(SPEC), "held_from": 1, **extra}


def frames_of(message: Message) -> Frames:
    return [bytes(f) for f in encode(message)]


def transitions(rng: np.random.Generator, sequence: int, actor: str = "fuzz", **arrays) -> Frames:
    """A valid TRANSITIONS message, with `arrays` replacing or adding raw arrays."""
    message = valid_chunk(rng).to_message(actor, sequence)
    message.arrays.update(arrays)
    return frames_of(message)


def with_header(frames: Frames, edit: Callable[[dict], None], type_code: int | None = None,
                sequence: int | None = None) -> Frames:
    """Re-encode frame 0 after `edit` changed its JSON object (raw JSON text when it returns str)."""
    magic, version, kind, seq = PREFIX.unpack(frames[0][:PREFIX.size])
    body = json.loads(frames[0][PREFIX.size:])
    text = edit(body)
    raw = text.encode() if isinstance(text, str) else json.dumps(body).encode()
    prefix = PREFIX.pack(magic, version, kind if type_code is None else type_code, seq if sequence is None else sequence)
    return [prefix + raw, *frames[1:]]


def raw_header(type_code: int, text: bytes | str, sequence: int = 1, data: Frames = ()) -> Frames:
    raw = text.encode() if isinstance(text, str) else text
    return [PREFIX.pack(b"FRRL", PROTOCOL_VERSION, type_code, sequence) + raw, *data]


# ------------------------------------------------------------------------------------ the corpus


def _set_descriptor(body: dict, which: str, **changes) -> None:
    for descriptor in body["arrays"]:
        if descriptor["name"] == which:
            descriptor.update(changes)


def triggers(rng: np.random.Generator, sequence: int) -> list[tuple[str, Frames]]:
    """Known hostile inputs, each labelled."""
    t = MessageType.TRANSITIONS
    base = transitions(rng, sequence)
    steps = 1
    out: list[tuple[str, Frames]] = [
        ("int_5000_digits", raw_header(t, '{"actor":"fuzz","arrays":[],"episode":' + "9" * 5000 + "}")),
        ("int_4301_digits_in_hello", raw_header(MessageType.HELLO, json.dumps(hello_fields())[:-1]
                                                + ',"held_from":' + "1" * 4301 + "}")),
        ("nested_lists_100000", raw_header(t, '{"actor":"fuzz","x":' + "[" * 100_000 + "]" * 100_000 + "}")),
        ("nested_objects_5000", raw_header(t, '{"actor":"fuzz","x":' + '{"a":' * 5000 + "1" + "}" * 5000 + "}")),
        ("nested_unclosed", raw_header(t, "[" * 50_000)),
        ("nested_in_shape", with_header(base, lambda b: _set_descriptor(b, "rewards", shape=json.loads("[" * 18 + "1"
                                                                                                    + "]" * 18)))),
        ("shape_0_by_2pow70_empty", with_header(
            [base[0], *base[1:], b""], lambda b: b["arrays"].append({"name": "x", "dtype": "<f4", "shape": [0, 2**70]}))),
        ("shape_0_by_2pow63_empty", with_header(  # 19 digits: within the integer limit, beyond MAX_DIM
            [base[0], *base[1:], b""], lambda b: b["arrays"].append({"name": "x", "dtype": "<f4", "shape": [0, 2**63]}))),
        ("shape_2pow70_by_0_rewards", with_header(
            [base[0], *base[1:]], lambda b: _set_descriptor(b, "success", shape=[2**70, 0]))),
        ("shape_negative", with_header(base, lambda b: _set_descriptor(b, "rewards", shape=[-1]))),
        ("shape_float", with_header(base, lambda b: _set_descriptor(b, "rewards", shape=[1.0]))),
        ("shape_bool", with_header(base, lambda b: _set_descriptor(b, "rewards", shape=[True]))),
        ("shape_string", with_header(base, lambda b: _set_descriptor(b, "rewards", shape="1"))),
        ("shape_9_dims", with_header(base, lambda b: _set_descriptor(b, "rewards", shape=[1] * 9))),
        ("terminated_float32", transitions(rng, sequence, terminated=np.ones(steps, np.float32))),
        ("truncated_float64", transitions(rng, sequence, truncated=np.zeros(steps, np.float64))),
        ("intervened_uint8", transitions(rng, sequence, intervened=np.zeros(steps, np.uint8))),
        ("success_int64", transitions(rng, sequence, success=np.zeros(steps, np.int64))),
        ("bool_byte_2", transitions(rng, sequence, terminated=np.frombuffer(b"\x02", np.bool_))),
        ("actions_1e30", transitions(rng, sequence, actions=np.full((steps, ACTION_DIM), 1e30, np.float32))),
        ("actions_1.5", transitions(rng, sequence, actions=np.full((steps, ACTION_DIM), 1.5, np.float32))),
        ("actions_nan", transitions(rng, sequence, actions=np.full((steps, ACTION_DIM), np.nan, np.float32))),
        ("actions_float64", transitions(rng, sequence, actions=np.zeros((steps, ACTION_DIM), np.float64))),
        ("actions_wrong_width", transitions(rng, sequence, actions=np.zeros((steps, ACTION_DIM + 1), np.float32))),
        ("reward_float64_1e300", transitions(rng, sequence, rewards=np.full(steps, 1e300, np.float64))),
        ("reward_float64_4e38", transitions(rng, sequence, rewards=np.full(steps, 4e38, np.float64))),
        ("reward_uint64", transitions(rng, sequence, rewards=np.full(steps, 2**63, np.uint64))),
        ("reward_int32", transitions(rng, sequence, rewards=np.ones(steps, np.int32))),
        ("reward_bool", transitions(rng, sequence, rewards=np.ones(steps, np.bool_))),
        ("reward_inf", transitions(rng, sequence, rewards=np.full(steps, np.inf, np.float32))),
        ("reward_nan_float16", transitions(rng, sequence, rewards=np.full(steps, np.nan, np.float16))),
        ("reward_scalar", with_header(base, lambda b: _set_descriptor(b, "rewards", shape=[]))),
        ("state_3e38", transitions(rng, sequence, **{"next_obs/state": np.full((steps, 5), 3e38, np.float32)})),
        ("state_2e6", transitions(rng, sequence, **{"next_obs/state": np.full((steps, 5), 2e6, np.float32)})),
        ("obs0_state_inf", transitions(rng, sequence, **{"obs0/state": np.full(5, np.inf, np.float32)})),
        ("state_float64", transitions(rng, sequence, **{"next_obs/state": np.zeros((steps, 5), np.float64)})),
        ("image_as_int16", transitions(rng, sequence, **{"next_obs/wrist_1": np.zeros((steps, 8, 8, 3), np.int16)})),
        ("extra_array", transitions(rng, sequence, extra=np.zeros(3, np.float32))),
        ("dtype_complex", with_header(base, lambda b: _set_descriptor(b, "rewards", dtype="<c8"))),
        ("dtype_object", with_header(base, lambda b: _set_descriptor(b, "rewards", dtype="|O"))),
        ("dtype_big_endian", with_header(base, lambda b: _set_descriptor(b, "rewards", dtype=">f4"))),
        ("dtype_void", with_header(base, lambda b: _set_descriptor(b, "rewards", dtype="|V4"))),
        ("dtype_list", with_header(base, lambda b: _set_descriptor(b, "rewards", dtype=["<f4"]))),
        ("dtype_u8_for_reward", with_header(base, lambda b: _set_descriptor(b, "rewards", dtype="<u4"))),
        ("descriptor_not_object", with_header(base, lambda b: b["arrays"].__setitem__(0, 7))),
        ("descriptor_duplicate", with_header([*base, base[1]], lambda b: b["arrays"].append(dict(b["arrays"][0])))),
        ("arrays_not_list", with_header(base[:1], lambda b: b.__setitem__("arrays", {"a": 1}))),
        ("missing_rewards", with_header(base, lambda b: _set_descriptor(b, "rewards", name="rewardz"))),
        ("frame_count_mismatch", base[:-1]),
        ("frame_short_by_one", [*base[:-1], base[-1][:-1]]),
        ("frame_long_by_one", [*base[:-1], base[-1] + b"\x00"]),
        ("header_too_large", raw_header(t, '{"actor":"fuzz","pad":"' + "x" * (200 * 1024) + '"}')),
        ("json_nan_constant", raw_header(t, '{"actor":"fuzz","arrays":[],"episode":NaN}')),
        ("json_infinity", raw_header(t, '{"actor":"fuzz","arrays":[],"episode":-Infinity}')),
        ("json_float_1e999", raw_header(t, '{"actor":"fuzz","arrays":[],"episode":1e999}')),
        ("json_not_object", raw_header(t, "[1,2,3]")),
        ("json_not_utf8", raw_header(t, b'{"actor":"\xff\xfe"}')),
        ("json_truncated", raw_header(t, '{"actor":"fuzz","arr')),
        ("json_empty", raw_header(t, b"")),
        ("actor_not_string", raw_header(t, '{"actor":5,"arrays":[]}')),
        ("episode_negative", with_header(base, lambda b: b.__setitem__("episode", -1))),
        ("episode_2pow60", with_header(base, lambda b: b.__setitem__("episode", 2**60))),
        ("step_string", with_header(base, lambda b: b.__setitem__("step", "0"))),
        ("step_bool", with_header(base, lambda b: b.__setitem__("step", False))),
        ("source_long", with_header(base, lambda b: b.__setitem__("source", "s" * 10_000))),
        ("source_list", with_header(base, lambda b: b.__setitem__("source", ["policy"]))),
        ("sequence_zero", with_header(base, lambda b: None, sequence=0)),
        ("sequence_max", with_header(base, lambda b: None, sequence=2**64 - 1)),
        ("other_actor_name", transitions(rng, sequence, actor="actor-0")),
        ("end_mid_chunk", frames_of(_end_mid_chunk(rng, sequence))),
        ("obs0_after_step_0", frames_of(_obs0_late(rng, sequence))),
        ("magic_foreign", [b"XXXX" + base[0][4:], *base[1:]]),
        ("version_other", [PREFIX.pack(b"FRRL", PROTOCOL_VERSION + 1, t, 1) + base[0][PREFIX.size:], *base[1:]]),
        ("type_unknown", [PREFIX.pack(b"FRRL", PROTOCOL_VERSION, 200, 1) + base[0][PREFIX.size:], *base[1:]]),
        ("prefix_short", [base[0][:9]]),
        ("empty_frame_only", [b""]),
        ("type_welcome_from_actor", frames_of(Message(MessageType.WELCOME, actor="fuzz", fields={"session": "x"}))),
        ("type_ack_from_actor", frames_of(Message(MessageType.ACK, actor="fuzz", fields={"stored_through": 10**9}))),
        ("type_params_from_actor", frames_of(Message(MessageType.PARAMS, actor="fuzz",
                                                     arrays={"w": np.zeros(3, np.float32)}))),
        ("type_reject_from_actor", frames_of(Message(MessageType.REJECT, actor="fuzz", fields={"code": "x"}))),
        ("backbone_request", frames_of(Message(MessageType.BACKBONE_REQUEST, actor="fuzz"))),
    ]
    hello = MessageType.HELLO
    bad_hellos = {
        "hello_held_from_string": hello_fields(held_from="1"),
        "hello_held_from_zero": hello_fields(held_from=0),
        "hello_held_from_bool": hello_fields(held_from=True),
        "hello_held_from_huge": hello_fields(held_from=10**19),
        "hello_incarnation_int": hello_fields(incarnation=3),
        "hello_incarnation_long": hello_fields(incarnation="i" * 5000),
        "hello_incarnation_slash": hello_fields(incarnation="a/b"),
        "hello_param_version_string": hello_fields(param_version="7"),
        "hello_wrong_hash": hello_fields(config_hash="other"),
        "hello_wrong_protocol": hello_fields(protocol_version=PROTOCOL_VERSION + 1),
        "hello_wrong_action_dim": hello_fields(action_dim=ACTION_DIM + 1),
        "hello_spec_not_object": hello_fields(observation_spec=[1, 2]),
        "hello_spec_huge_dims": hello_fields(observation_spec={"state": [[2**70], "<f4"]}),
        "hello_spec_bad_dtype": hello_fields(observation_spec={"state": [[5], "|O"]}),
        "hello_spec_other": hello_fields(observation_spec={"state": [[6], "<f4"]}),
        "hello_missing_fields": {"incarnation": "fuzz-1"},
    }
    out += [(name, frames_of(Message(hello, actor="squatter", fields=fields))) for name, fields in bad_hellos.items()]
    out += [
        ("hello_actor_empty", frames_of(Message(hello, actor="", fields=hello_fields()))),
        ("hello_actor_slash", frames_of(Message(hello, actor="a/b", fields=hello_fields()))),
        ("hello_actor_long", frames_of(Message(hello, actor="a" * 1000, fields=hello_fields()))),
        ("hello_actor_control_chars", frames_of(Message(hello, actor="a\x00\x1b", fields=hello_fields()))),
    ]
    return out


def _end_mid_chunk(rng: np.random.Generator, sequence: int) -> Message:
    chunk = valid_chunk(rng, steps=3)
    chunk.terminated[0] = True
    return chunk.to_message("fuzz", sequence)


def _obs0_late(rng: np.random.Generator, sequence: int) -> Message:
    chunk = valid_chunk(rng, steps=1, step=0)
    message = chunk.to_message("fuzz", sequence)
    message.fields["step"] = 1
    return message


HOSTILE_VALUES = [None, True, -1, 0, 2**63, 10**19, -(10**19), 1e308, -0.0, "", "x" * 300, [], [[[]]], {}, {"a": [1]},
                  [2**31, 2**31], [0, 2**31 - 1], ["<f4"]]


def mutations(rng: np.random.Generator, sequence: int) -> Frames:
    """One random edit of a valid message."""
    choice = int(rng.integers(0, 3))
    if choice == 0:
        frames = transitions(rng, sequence)
    elif choice == 1:
        frames = frames_of(Message(MessageType.HELLO, actor="fuzz", fields=hello_fields()))
    else:
        frames = frames_of(Message(MessageType.HEARTBEAT, actor="fuzz"))
    kind = int(rng.integers(0, 8))
    if kind == 0:  # bit flips in the header
        head = bytearray(frames[0])
        for _ in range(int(rng.integers(1, 6))):
            position = int(rng.integers(0, len(head)))
            head[position] ^= 1 << int(rng.integers(0, 8))
        return [bytes(head), *frames[1:]]
    if kind == 1 and len(frames) > 1:  # bytes of a data frame overwritten
        index = int(rng.integers(1, len(frames)))
        data = bytearray(frames[index])
        if data:
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        frames[index] = bytes(data)
        return frames
    if kind == 2:  # a header field replaced by a hostile value
        def edit(body: dict) -> None:
            keys = [k for k in body if k != "arrays"] or ["actor"]
            body[keys[int(rng.integers(0, len(keys)))]] = HOSTILE_VALUES[int(rng.integers(0, len(HOSTILE_VALUES)))]
        return with_header(frames, edit)
    if kind == 3 and len(frames) > 1:  # a descriptor field replaced
        def edit(body: dict) -> None:
            descriptor = body["arrays"][int(rng.integers(0, len(body["arrays"])))]
            key = ("name", "dtype", "shape")[int(rng.integers(0, 3))]
            descriptor[key] = HOSTILE_VALUES[int(rng.integers(0, len(HOSTILE_VALUES)))]
        return with_header(frames, edit)
    if kind == 4:  # frames dropped, repeated or swapped
        frames = list(frames)
        op = int(rng.integers(0, 3))
        if op == 0 and len(frames) > 1:
            del frames[int(rng.integers(1, len(frames)))]
        elif op == 1:
            frames.append(frames[int(rng.integers(0, len(frames)))])
        elif len(frames) > 2:
            i, j = rng.choice(np.arange(1, len(frames)), 2, replace=False)
            frames[i], frames[j] = frames[j], frames[i]
        return frames
    if kind == 5:  # truncated somewhere
        index = int(rng.integers(0, len(frames)))
        frames[index] = frames[index][: int(rng.integers(0, max(len(frames[index]), 1)))]
        return frames
    if kind == 6:  # random bytes, random frame count
        return [rng.bytes(int(rng.integers(0, 200))) for _ in range(int(rng.integers(1, 5)))]
    # a float array's values replaced by extreme numbers
    values = np.array([np.nan, np.inf, -np.inf, 3.4e38, 1e30, -1e7, 1.0000001, 5e-324], np.float64)
    name = ("actions", "rewards", "next_obs/state")[int(rng.integers(0, 3))]
    shape = {"actions": (1, ACTION_DIM), "rewards": (1,), "next_obs/state": (1, 5)}[name]
    dtype = np.float64 if name == "rewards" and rng.random() < 0.5 else np.float32
    with np.errstate(over="ignore"):
        array = rng.choice(values, shape).astype(dtype)
    return transitions(rng, sequence, **{name: array})


def corpus(seed: int, cases: int, next_sequence: Callable[[], int]) -> Iterator[tuple[str, Frames]]:
    """The triggers (all of them), then random mutations, up to `cases` in all; every 10th case
    is a valid chunk with the next sequence number, so the stream keeps being stored."""
    rng = np.random.default_rng(seed)
    emitted = 0
    for name, frames in triggers(rng, next_sequence()):
        if emitted >= cases:
            return
        yield name, frames
        emitted += 1
    while emitted < cases:
        if emitted % 10 == 0:
            yield "valid", transitions(rng, next_sequence())
        else:
            yield "mutation", mutations(rng, next_sequence())
        emitted += 1


# ------------------------------------------------------------------------------------ the harness


def invalid_reasons(chunk: TransitionChunk) -> list[str]:
    """What is wrong with a stored chunk, checked here independently of the transport."""
    problems = []
    if chunk.actions.dtype != np.float32 or chunk.actions.shape != (len(chunk), ACTION_DIM):
        problems.append("actions dtype/shape")
    elif not np.all(np.isfinite(chunk.actions)) or np.abs(chunk.actions).max() > 1.0:
        problems.append("actions outside [-1, 1]")
    if chunk.rewards.dtype != np.float32 or not np.all(np.isfinite(chunk.rewards)):
        problems.append("rewards not finite float32")
    for name in ("terminated", "truncated", "intervened", "success"):
        value = getattr(chunk, name)
        if value.dtype != np.bool_ or value.shape != (len(chunk),) or (value.size and value.view(np.uint8).max() > 1):
            problems.append(f"{name} not bool")
    observations = [chunk.next_observations] + ([chunk.first_observation] if chunk.first_observation else [])
    for obs in observations:
        for key, (shape, dtype) in SPEC.items():
            value = obs.get(key)
            if value is None or value.dtype != dtype or value.shape[-len(shape):] != shape:
                problems.append(f"observation {key} dtype/shape")
            elif value.dtype.kind == "f" and (not np.all(np.isfinite(value))
                                              or np.abs(value).max() > MAX_ABS_OBSERVATION):
                problems.append(f"observation {key} not finite or too large")
    return problems


class MiniLearner(threading.Thread):
    """Takes deliveries like `Learner.store` (sequence stored_through + 1 only, acknowledged) and
    stores each step in a real ReplayBuffer; counts anything invalid that got this far."""

    def __init__(self, server: LearnerServer):
        super().__init__(daemon=True, name="fuzz-learner")
        self.server = server
        self.buffer = ReplayBuffer(SPEC, ACTION_DIM, 100_000, shaping=RewardShaping(1.0, -1.0, 0.99, True))
        self.stored: dict[str, int] = {}
        self.stored_chunks = 0
        self.invalid: list[str] = []
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                deliveries = self.server.receive(timeout=0.02)
            except Exception as exc:  # the transport died: recorded, the harness reports it
                self.errors.append(f"receive: {type(exc).__name__}: {exc}")
                return
            for delivery in deliveries:
                self.take(delivery)

    def take(self, delivery) -> None:
        through = self.stored.get(delivery.stream, 0)
        if delivery.chunk is None:
            self.stored[delivery.stream] = max(through, delivery.sequence)
        elif delivery.sequence == through + 1:
            chunk = delivery.chunk
            problems = invalid_reasons(chunk)
            if problems:
                self.invalid.append(f"{delivery.stream}#{delivery.sequence}: {', '.join(problems)}")
            previous = chunk.first_observation if chunk.step == 0 else None
            try:
                for k in range(len(chunk)):
                    observation = {key: value[k] for key, value in chunk.next_observations.items()}
                    if previous is not None:
                        self.buffer.insert(previous, chunk.actions[k], float(chunk.rewards[k]), observation,
                                           bool(chunk.terminated[k]), bool(chunk.truncated[k]),
                                           bool(chunk.intervened[k]), stream=delivery.stream)
                    previous = observation
            except Exception as exc:
                self.errors.append(f"store: {type(exc).__name__}: {exc}")
            self.stored[delivery.stream] = delivery.sequence
            self.stored_chunks += 1
        self.server.ack(delivery.stream, stored_through=self.stored.get(delivery.stream, 0),
                        resend=delivery.sequence > through + 1)


@dataclass
class FuzzReport:
    cases: int = 0
    rejected: int = 0
    stored: int = 0
    silent: int = 0  # no reply to the case itself (not a hang: the probe still answered)
    hangs: int = 0  # the probe's heartbeat went unanswered after a case
    thread_deaths: int = 0
    stored_invalid: int = 0
    actor_accepted: bool = False
    wall_s: float = 0.0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def table(self) -> str:
        rows = [("cases", self.cases), ("rejected", self.rejected), ("stored (valid chunks)", self.stored),
                ("no reply to the case", self.silent), ("hangs", self.hangs), ("thread deaths", self.thread_deaths),
                ("stored invalid", self.stored_invalid), ("real actor accepted after", self.actor_accepted),
                ("wall time (s)", f"{self.wall_s:.1f}")]
        rows += [(f"  rejected: {reason}", n) for reason, n in sorted(self.rejected_by_reason.items())]
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _connect(context: zmq.Context, port: int) -> zmq.Socket:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    return sock


def _replies(sock: zmq.Socket, timeout_s: float) -> list[list[bytes]]:
    """Wait up to `timeout_s` for a first reply, then take whatever else is already there."""
    out = []
    if sock.poll(int(timeout_s * 1000)):
        while sock.poll(0):
            out.append(sock.recv_multipart())
    return out


def _handshake(sock: zmq.Socket, actor: str, incarnation: str, timeout_s: float = 5.0) -> None:
    sock.send_multipart(frames_of(Message(MessageType.HELLO, actor=actor, fields=hello_fields(incarnation))))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for reply in _replies(sock, 0.2):
            if PREFIX.unpack(reply[0][:PREFIX.size])[2] == MessageType.WELCOME:
                return
    raise RuntimeError(f"the learner did not welcome '{actor}'")


def run_corpus(cases: int, seed: int = 0, reply_timeout_s: float = 0.5, probe_timeout_s: float = 3.0,
               cfg: TransportConfig | None = None, check_actor: bool = True) -> FuzzReport:
    """Run `cases` hostile messages against a live learner transport; see the module docstring."""
    cfg = cfg or TransportConfig(port=free_port(), heartbeat_interval_s=0.2, heartbeat_timeout_s=2.0,
                                 max_abs_observation=MAX_ABS_OBSERVATION)
    report = FuzzReport()
    start = time.monotonic()
    server = LearnerServer(cfg, config_hash=CONFIG_HASH, observation_spec=SPEC, action_dim=ACTION_DIM).start()
    learner = MiniLearner(server)
    learner.start()
    context = zmq.Context()
    fuzzer, probe = _connect(context, cfg.port), _connect(context, cfg.port)
    heartbeat = frames_of(Message(MessageType.HEARTBEAT, actor="probe"))
    try:
        _handshake(fuzzer, "fuzz", "fuzz-1")
        _handshake(probe, "probe", "probe-1")

        def next_sequence() -> int:
            # The fuzzer's stream changes when a mutated HELLO is valid enough to start a new one.
            streams = [p.stream for p in list(server._peers.values()) if p.actor == "fuzz"] or ["fuzz/fuzz-1"]
            return min(learner.stored.get(streams[0], 0) + 1, 2**64 - 1)

        for _name, frames in corpus(seed, cases, next_sequence):
            fuzzer.send_multipart(frames)
            report.cases += 1
            if not _replies(fuzzer, reply_timeout_s):
                report.silent += 1
            probe.send_multipart(heartbeat)
            if not _replies(probe, probe_timeout_s):
                report.hangs += 1
            if not server._thread.is_alive():
                report.thread_deaths += 1
                break
        # A real actor still gets through afterwards.
        if check_actor:
            actor_cfg = TransportConfig(port=cfg.port, heartbeat_interval_s=0.1, heartbeat_timeout_s=2.0)
            with ActorClient(actor_cfg, actor_id="actor-real", config_hash=CONFIG_HASH, observation_spec=SPEC,
                             action_dim=ACTION_DIM) as client:
                deadline = time.monotonic() + 10.0
                while client.state != "up" and time.monotonic() < deadline:
                    time.sleep(0.01)
                client.send(valid_chunk(np.random.default_rng(seed + 1)))
                while not client.all_stored() and time.monotonic() < deadline:
                    time.sleep(0.01)
                report.actor_accepted = client.state == "up" and client.all_stored()
    finally:
        learner.halt.set()
        learner.join(5.0)
        fuzzer.close(0)
        probe.close(0)
        context.term()
        report.thread_deaths = max(report.thread_deaths, int(server.failure is not None))
        report.rejected = server.rejected
        report.rejected_by_reason = server.rejected_by_reason()
        server.close()
    report.stored = learner.stored_chunks
    report.stored_invalid = len(learner.invalid)
    report.problems = learner.invalid[:10] + learner.errors[:10]
    report.wall_s = time.monotonic() - start
    if not math.isfinite(report.wall_s):
        report.wall_s = 0.0
    return report
