"""The wire format between actors and the learner: a typed, versioned header plus raw arrays.

A message is a list of ZeroMQ frames:

    frame 0   header: 16-byte prefix, then a UTF-8 JSON object
                prefix (network byte order, struct "!4sHBxQ"):
                  magic     4s   b"FRRL"
                  version   H    PROTOCOL_VERSION
                  type      B    a MessageType
                  (pad)     x
                  sequence  Q    the sender's sequence number (transitions: per actor, from 1)
                JSON: {"actor": str, "arrays": [{"name", "dtype", "shape"}, ...], ...fields}
    frame i   the raw bytes of arrays[i - 1], C order, exactly prod(shape) * itemsize bytes

Nothing is pickled: dtypes come from a short allow-list of numeric types, and a message whose
header, descriptors or frame sizes do not agree is refused with `ProtocolError` before any array
is built. docs/processes.md describes each message type.
"""

from __future__ import annotations

import enum
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAGIC = b"FRRL"
PROTOCOL_VERSION = 1
PREFIX = struct.Struct("!4sHBxQ")
MAX_HEADER_BYTES = 1 << 20
MAX_ARRAYS = 4096
MAX_DIMS = 8
# Little-endian numeric types only: an object or structured dtype could not travel without pickle.
ALLOWED_DTYPES = frozenset({"|u1", "|i1", "|b1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"})


class MessageType(enum.IntEnum):
    HELLO = 1  # actor -> learner: who I am, protocol version, config hash, observation spec
    WELCOME = 2  # learner -> actor: accepted; where to resume sending, the learner's session
    REJECT = 3  # learner -> actor: refused (reason, code)
    TRANSITIONS = 4  # actor -> learner: consecutive steps of one episode
    ACK = 5  # learner -> actor: stored / durable (checkpointed) sequence numbers
    PARAMS = 6  # learner -> actor: trainable parameters (or, once, the frozen backbone)
    HEARTBEAT = 7  # both ways: liveness, the learner's session and parameter version
    BACKBONE_REQUEST = 8  # actor -> learner: send me your frozen backbone (digests differ)


class ProtocolError(ValueError):
    """A message that does not follow this protocol (malformed, foreign or of another version)."""


@dataclass
class Message:
    type: MessageType
    sequence: int = 0
    actor: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _dtype_name(array: np.ndarray) -> str:
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    name = dtype.str
    if name not in ALLOWED_DTYPES:
        raise ProtocolError(f"array dtype {array.dtype} cannot travel (allowed: {sorted(ALLOWED_DTYPES)})")
    return name


def encode(message: Message) -> list[bytes | memoryview]:
    """Frames for `message`. Arrays are sent from their own memory where already C-contiguous."""
    descriptors, buffers = [], []
    for name, value in message.arrays.items():
        array = np.asarray(value)
        dtype = _dtype_name(array)
        array = np.ascontiguousarray(array, dtype=np.dtype(dtype))
        descriptors.append({"name": name, "dtype": dtype, "shape": list(array.shape)})
        buffers.append(memoryview(array).cast("B") if array.size else b"")
    body = {**message.fields, "actor": message.actor, "arrays": descriptors}
    header = PREFIX.pack(MAGIC, PROTOCOL_VERSION, int(message.type), int(message.sequence))
    return [header + json.dumps(body, separators=(",", ":")).encode(), *buffers]


def _as_bytes(frame: Any) -> memoryview:
    if hasattr(frame, "buffer"):  # zmq.Frame received with copy=False
        return frame.buffer
    return memoryview(frame)


def decode(frames: Sequence[Any]) -> Message:
    """Parse and check frames; raises ProtocolError saying what is wrong."""
    if not frames:
        raise ProtocolError("empty message")
    head = _as_bytes(frames[0])
    if len(head) < PREFIX.size:
        raise ProtocolError(f"header of {len(head)} bytes is shorter than the {PREFIX.size}-byte prefix")
    if len(head) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(head)} bytes exceeds {MAX_HEADER_BYTES}")
    magic, version, type_code, sequence = PREFIX.unpack(head[:PREFIX.size])
    if magic != MAGIC:
        raise ProtocolError(f"foreign message (magic {bytes(magic)!r}, expected {MAGIC!r})")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version}, this side speaks {PROTOCOL_VERSION}: "
                            "run the same franka-rl version on both sides")
    try:
        kind = MessageType(type_code)
    except ValueError:
        raise ProtocolError(f"unknown message type {type_code}") from None
    try:
        body = json.loads(bytes(head[PREFIX.size:]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"header JSON unreadable ({exc})") from None
    if not isinstance(body, dict):
        raise ProtocolError("header JSON is not an object")
    actor = body.pop("actor", "")
    descriptors = body.pop("arrays", [])
    if not isinstance(actor, str):
        raise ProtocolError("header field 'actor' is not a string")
    if not isinstance(descriptors, list) or len(descriptors) > MAX_ARRAYS:
        raise ProtocolError("header field 'arrays' is not a list of at most "f"{MAX_ARRAYS} descriptors")
    if len(descriptors) != len(frames) - 1:
        raise ProtocolError(f"header describes {len(descriptors)} arrays but {len(frames) - 1} data frames came")
    arrays: dict[str, np.ndarray] = {}
    for descriptor, frame in zip(descriptors, frames[1:], strict=True):
        name, array = _array_from(descriptor, _as_bytes(frame))
        if name in arrays:
            raise ProtocolError(f"array '{name}' appears twice")
        arrays[name] = array
    return Message(kind, sequence, actor, body, arrays)


def _array_from(descriptor: Any, data: memoryview) -> tuple[str, np.ndarray]:
    if not isinstance(descriptor, dict):
        raise ProtocolError("an array descriptor is not an object")
    name, dtype, shape = descriptor.get("name"), descriptor.get("dtype"), descriptor.get("shape")
    if not isinstance(name, str) or not name:
        raise ProtocolError("an array descriptor has no name")
    if dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"array '{name}' has dtype {dtype!r}, not one of the allowed numeric types")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise ProtocolError(f"array '{name}' has an invalid shape {shape!r}")
    itemsize = np.dtype(dtype).itemsize
    expected = math.prod(shape) * itemsize
    if expected != len(data):
        raise ProtocolError(f"array '{name}' {dtype}{tuple(shape)} needs {expected} bytes, its frame has {len(data)}")
    return name, np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)


# ------------------------------------------------------------------------------- field checks


def require(message: Message, name: str, kind: type | tuple[type, ...]) -> Any:
    """A header field of the given type, or ProtocolError naming it."""
    value = message.fields.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{message.type.name} needs field '{name}' of type "
                            f"{getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def require_arrays(message: Message, names: Sequence[str]) -> None:
    missing = [n for n in names if n not in message.arrays]
    if missing:
        raise ProtocolError(f"{message.type.name} lacks arrays {missing}")


# ------------------------------------------------------------------------------- observation specs

ObservationSpec = dict[str, tuple[tuple[int, ...], str]]


def spec_to_json(spec: Mapping[str, tuple[Sequence[int], Any]]) -> dict[str, list]:
    return {k: [list(int(d) for d in shape), np.dtype(dtype).str] for k, (shape, dtype) in sorted(spec.items())}


def spec_from_json(value: Any) -> ObservationSpec:
    if not isinstance(value, dict):
        raise ProtocolError("observation spec is not an object")
    spec: ObservationSpec = {}
    for key, entry in value.items():
        if (not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], list)
                or entry[1] not in ALLOWED_DTYPES
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry[0])):
            raise ProtocolError(f"observation spec entry '{key}' is malformed: {entry!r}")
        spec[str(key)] = (tuple(entry[0]), entry[1])
    return spec


# ------------------------------------------------------------------------------- transitions

STEP_ARRAYS = ("actions", "rewards", "terminated", "truncated", "intervened", "success")
NEXT_OBS_PREFIX = "next_obs/"
FIRST_OBS_PREFIX = "obs0/"


@dataclass
class TransitionChunk:
    """Consecutive steps `step .. step + K - 1` of one episode of one actor.

    `next_observations[k]` is o_{step+k+1}; the chunk that starts an episode (step 0) also
    carries o_0 in `first_observation`.
    """

    episode: int
    step: int
    actions: np.ndarray  # (K, A) float32
    rewards: np.ndarray  # (K,) float32, raw
    terminated: np.ndarray  # (K,) bool
    truncated: np.ndarray  # (K,) bool
    intervened: np.ndarray  # (K,) bool
    success: np.ndarray  # (K,) bool
    next_observations: dict[str, np.ndarray]  # key -> (K, ...)
    first_observation: dict[str, np.ndarray] | None = None  # key -> (...), only when step == 0
    source: str = "policy"

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def ends_episode(self) -> bool:
        return bool(self.terminated[-1] or self.truncated[-1])

    def to_message(self, actor: str, sequence: int) -> Message:
        arrays: dict[str, np.ndarray] = {
            "actions": np.asarray(self.actions, np.float32),
            "rewards": np.asarray(self.rewards, np.float32),
            "terminated": np.asarray(self.terminated, bool),
            "truncated": np.asarray(self.truncated, bool),
            "intervened": np.asarray(self.intervened, bool),
            "success": np.asarray(self.success, bool),
        }
        arrays.update({NEXT_OBS_PREFIX + k: v for k, v in self.next_observations.items()})
        if self.first_observation is not None:
            arrays.update({FIRST_OBS_PREFIX + k: v for k, v in self.first_observation.items()})
        fields = {"episode": int(self.episode), "step": int(self.step), "source": self.source}
        return Message(MessageType.TRANSITIONS, sequence, actor, fields, arrays)

    @classmethod
    def from_message(cls, message: Message, spec: ObservationSpec, action_dim: int) -> TransitionChunk:
        """Check a TRANSITIONS message against the observation spec and action size."""
        episode = require(message, "episode", int)
        step = require(message, "step", int)
        source = require(message, "source", str)
        if episode < 0 or step < 0:
            raise ProtocolError("episode and step must be >= 0")
        require_arrays(message, STEP_ARRAYS)
        arrays = message.arrays
        steps = arrays["rewards"].shape[0] if arrays["rewards"].ndim == 1 else -1
        if steps < 1:
            raise ProtocolError("rewards must be a non-empty vector")
        if arrays["actions"].shape != (steps, action_dim) or arrays["actions"].dtype != np.float32:
            raise ProtocolError(f"actions must be float32 {(steps, action_dim)}, got "
                                f"{arrays['actions'].dtype}{arrays['actions'].shape}")
        for name in STEP_ARRAYS[1:]:
            if arrays[name].shape != (steps,):
                raise ProtocolError(f"'{name}' must have shape {(steps,)}, got {arrays[name].shape}")
        if not np.all(np.isfinite(arrays["actions"])) or not np.all(np.isfinite(arrays["rewards"])):
            raise ProtocolError("actions or rewards are not finite")
        ends = arrays["terminated"] | arrays["truncated"]
        if np.any(ends[:-1]):
            raise ProtocolError("an episode may end only at the last step of a chunk")
        next_obs = _observations(arrays, NEXT_OBS_PREFIX, spec, (steps,))
        first = _observations(arrays, FIRST_OBS_PREFIX, spec, ()) if step == 0 else None
        extra = sorted(k for k in arrays if k not in STEP_ARRAYS and not k.startswith((NEXT_OBS_PREFIX, FIRST_OBS_PREFIX)))
        if extra or (step != 0 and any(k.startswith(FIRST_OBS_PREFIX) for k in arrays)):
            raise ProtocolError(f"unexpected arrays {extra or ['obs0/* after step 0']}")
        return cls(episode, step, arrays["actions"], arrays["rewards"], arrays["terminated"].astype(bool),
                   arrays["truncated"].astype(bool), arrays["intervened"].astype(bool),
                   arrays["success"].astype(bool), next_obs, first, source)


def _observations(arrays: Mapping[str, np.ndarray], prefix: str, spec: ObservationSpec,
                  lead: tuple[int, ...]) -> dict[str, np.ndarray]:
    found = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    if set(found) != set(spec):
        raise ProtocolError(f"observation keys {sorted(found)} != expected {sorted(spec)}")
    for key, (shape, dtype) in spec.items():
        value = found[key]
        if value.shape != (*lead, *shape) or value.dtype != np.dtype(dtype):
            raise ProtocolError(f"observation '{prefix}{key}' is {value.dtype}{value.shape}, expected "
                                f"{np.dtype(dtype)}{(*lead, *shape)}")
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise ProtocolError(f"observation '{prefix}{key}' is not finite")
    return found
