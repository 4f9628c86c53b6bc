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
is built. The header is parsed under hard limits (`Limits`: its size, JSON nesting depth,
integer length, array count, rank and dimension sizes), so no input can make the parser recurse,
allocate or convert without bound. docs/processes.md describes each message type and the limits.
"""

from __future__ import annotations

import enum
import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAGIC = b"FRRL"
# 2: HELLO carries `param_version`; REJECT code `busy` (back-pressure); bounded header parsing.
PROTOCOL_VERSION = 2
PREFIX = struct.Struct("!4sHBxQ")
MAX_HEADER_BYTES = 1 << 20
MAX_ARRAYS = 4096
MAX_DIMS = 8
# Hard limits of the header parser (not settable: no honest message comes near them).
MAX_JSON_DEPTH = 16
MAX_INT_DIGITS = 20  # |int| < 10**20 covers every uint64; Python refuses > 4300 digits with ValueError
MAX_DIM = (1 << 31) - 1
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
    """A message that does not follow this protocol (malformed, foreign or of another version).

    `reason` is a short category for metrics (`transport/rejected/<reason>`): "framing" (prefix,
    size, frame count), "header" (JSON and its limits), "array" (descriptors, dtypes, shapes,
    byte counts), "field" (a header field missing or of the wrong type), "value" (numbers out of
    range or not finite), "order" (a message out of turn), "hello" (an unusable handshake)."""

    def __init__(self, message: str, reason: str = "header"):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """What the receiver accepts; the learner builds one from its TransportConfig."""

    max_header_bytes: int = MAX_HEADER_BYTES
    max_arrays: int = MAX_ARRAYS


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


def decode(frames: Sequence[Any], limits: Limits | None = None) -> Message:
    """Parse and check frames; raises ProtocolError saying what is wrong."""
    limits = limits or Limits()
    if not frames:
        raise ProtocolError("empty message", "framing")
    if len(frames) - 1 > limits.max_arrays:
        raise ProtocolError(f"{len(frames) - 1} data frames exceed the limit of {limits.max_arrays}", "framing")
    head = _as_bytes(frames[0])
    if len(head) < PREFIX.size:
        raise ProtocolError(f"header of {len(head)} bytes is shorter than the {PREFIX.size}-byte prefix", "framing")
    if len(head) > limits.max_header_bytes:
        raise ProtocolError(f"header of {len(head)} bytes exceeds {limits.max_header_bytes} "
                            "(transport.max_header_bytes)", "framing")
    magic, version, type_code, sequence = PREFIX.unpack(head[:PREFIX.size])
    if magic != MAGIC:
        raise ProtocolError(f"foreign message (magic {bytes(magic)!r}, expected {MAGIC!r})", "framing")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version}, this side speaks {PROTOCOL_VERSION}: "
                            "run the same franka-rl version on both sides", "framing")
    try:
        kind = MessageType(type_code)
    except ValueError:
        raise ProtocolError(f"unknown message type {type_code}", "framing") from None
    body = parse_header_json(bytes(head[PREFIX.size:]))
    if not isinstance(body, dict):
        raise ProtocolError("header JSON is not an object")
    actor = body.pop("actor", "")
    descriptors = body.pop("arrays", [])
    if not isinstance(actor, str):
        raise ProtocolError("header field 'actor' is not a string", "field")
    if not isinstance(descriptors, list) or len(descriptors) > limits.max_arrays:
        raise ProtocolError(f"header field 'arrays' is not a list of at most {limits.max_arrays} descriptors", "array")
    if len(descriptors) != len(frames) - 1:
        raise ProtocolError(f"header describes {len(descriptors)} arrays but {len(frames) - 1} data frames came",
                            "framing")
    arrays: dict[str, np.ndarray] = {}
    for descriptor, frame in zip(descriptors, frames[1:], strict=True):
        name, array = _array_from(descriptor, _as_bytes(frame))
        if name in arrays:
            raise ProtocolError(f"array '{name}' appears twice", "array")
        arrays[name] = array
    return Message(kind, sequence, actor, body, arrays)


# A JSON string literal (escapes included); what is left outside them holds the brackets.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]")
_OPENERS = np.frombuffer(b"[{", np.uint8)


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ProtocolError(f"header JSON holds an integer of {len(text.lstrip('-'))} digits "
                            f"(at most {MAX_INT_DIGITS})", "header")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(f"header JSON holds a number that is not finite as a float64 ({text[:20]})", "header")
    return value


def _no_constant(text: str) -> float:
    raise ProtocolError(f"header JSON holds {text}, which is not JSON", "header")


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays/objects in `raw`, counted without recursion."""
    brackets = _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", raw))
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, np.uint8)
    steps = np.where(np.isin(codes, _OPENERS), 1, -1)
    return int(np.cumsum(steps).max())


def parse_header_json(raw: bytes) -> Any:
    """json.loads under this protocol's limits; any failure is a ProtocolError."""
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise ProtocolError(f"header JSON nests {depth} deep (at most {MAX_JSON_DEPTH})", "header")
    try:
        return json.loads(raw.decode("utf-8"), parse_int=_bounded_int, parse_float=_finite_float,
                          parse_constant=_no_constant)
    except ProtocolError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError, TypeError) as exc:
        raise ProtocolError(f"header JSON unreadable ({str(exc)[:120]})", "header") from None


def _array_from(descriptor: Any, data: memoryview) -> tuple[str, np.ndarray]:
    if not isinstance(descriptor, dict):
        raise ProtocolError("an array descriptor is not an object", "array")
    name, dtype, shape = descriptor.get("name"), descriptor.get("dtype"), descriptor.get("shape")
    if not isinstance(name, str) or not name or len(name) > 256:
        raise ProtocolError("an array descriptor has no name (or one longer than 256 characters)", "array")
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"array '{name}' has dtype {str(dtype)[:40]!r}, not one of the allowed numeric types",
                            "array")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape)):
        raise ProtocolError(f"array '{name}' has an invalid shape {str(shape)[:80]} (at most {MAX_DIMS} "
                            f"dimensions of 0..{MAX_DIM})", "array")
    itemsize = np.dtype(dtype).itemsize
    expected = math.prod(shape) * itemsize
    if expected != len(data):
        raise ProtocolError(f"array '{name}' {dtype}{tuple(shape)} needs {expected} bytes, its frame has {len(data)}",
                            "array")
    array = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)
    if array.dtype == np.bool_ and array.size and int(array.view(np.uint8).max()) > 1:
        raise ProtocolError(f"bool array '{name}' holds bytes other than 0 and 1", "array")
    return name, array


# ------------------------------------------------------------------------------- field checks


def require(message: Message, name: str, kind: type | tuple[type, ...]) -> Any:
    """A header field of the given type, or ProtocolError naming it."""
    value = message.fields.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{message.type.name} needs field '{name}' of type "
                            f"{getattr(kind, '__name__', kind)}, got {str(value)[:40]!r}", "field")
    return value


def require_arrays(message: Message, names: Sequence[str]) -> None:
    missing = [n for n in names if n not in message.arrays]
    if missing:
        raise ProtocolError(f"{message.type.name} lacks arrays {missing}", "array")


# ------------------------------------------------------------------------------- observation specs

ObservationSpec = dict[str, tuple[tuple[int, ...], str]]


def spec_to_json(spec: Mapping[str, tuple[Sequence[int], Any]]) -> dict[str, list]:
    return {k: [list(int(d) for d in shape), np.dtype(dtype).str] for k, (shape, dtype) in sorted(spec.items())}


def spec_from_json(value: Any) -> ObservationSpec:
    if not isinstance(value, dict):
        raise ProtocolError("observation spec is not an object", "hello")
    spec: ObservationSpec = {}
    for key, entry in value.items():
        if (not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], list)
                or len(entry[0]) > MAX_DIMS or not isinstance(entry[1], str) or entry[1] not in ALLOWED_DTYPES
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in entry[0])):
            raise ProtocolError(f"observation spec entry '{str(key)[:40]}' is malformed: {str(entry)[:80]}", "hello")
        spec[str(key)] = (tuple(entry[0]), entry[1])
    return spec


# ------------------------------------------------------------------------------- transitions

STEP_ARRAYS = ("actions", "rewards", "terminated", "truncated", "intervened", "success")
# Actions may exceed the action space by float rounding only.
ACTION_TOLERANCE = 1e-5
MAX_COUNT = 1 << 53  # episode and step indices
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
    def from_message(cls, message: Message, spec: ObservationSpec, action_dim: int, *,
                     action_bound: float = 1.0, max_abs_observation: float = math.inf) -> TransitionChunk:
        """Check a TRANSITIONS message against the observation spec, the action space and the
        value limits, after casting to the dtypes the replay buffer stores (float32 actions and
        rewards): what passes can be stored as it is."""
        episode = require(message, "episode", int)
        step = require(message, "step", int)
        source = require(message, "source", str)
        if not (0 <= episode < MAX_COUNT and 0 <= step < MAX_COUNT):
            raise ProtocolError(f"episode and step must be in 0..{MAX_COUNT - 1}", "field")
        if not source or len(source) > 32:
            raise ProtocolError("field 'source' must be a name of 1..32 characters", "field")
        require_arrays(message, STEP_ARRAYS)
        arrays = message.arrays
        steps = arrays["rewards"].shape[0] if arrays["rewards"].ndim == 1 else -1
        if steps < 1:
            raise ProtocolError("rewards must be a non-empty vector", "array")
        if arrays["actions"].shape != (steps, action_dim) or arrays["actions"].dtype != np.float32:
            raise ProtocolError(f"actions must be float32 {(steps, action_dim)}, got "
                                f"{arrays['actions'].dtype}{arrays['actions'].shape}", "array")
        for name in STEP_ARRAYS[1:]:
            if arrays[name].shape != (steps,):
                raise ProtocolError(f"'{name}' must have shape {(steps,)}, got {arrays[name].shape}", "array")
        if arrays["rewards"].dtype.kind != "f":
            raise ProtocolError(f"rewards must be a real float array, got {arrays['rewards'].dtype}", "array")
        for name in STEP_ARRAYS[2:]:
            if arrays[name].dtype != np.bool_:
                raise ProtocolError(f"'{name}' must be a bool array, got {arrays[name].dtype}", "array")
        actions = arrays["actions"]
        with np.errstate(over="ignore", invalid="ignore"):
            rewards = arrays["rewards"].astype(np.float32)  # what the buffer stores: check that
        if not np.all(np.isfinite(actions)):
            raise ProtocolError("actions are not finite", "value")
        tolerance = ACTION_TOLERANCE * max(1.0, action_bound)
        if np.any(np.abs(actions) > action_bound + tolerance):
            raise ProtocolError(f"actions reach {float(np.abs(actions).max()):.4g}, outside the action space "
                                f"[-{action_bound:g}, {action_bound:g}]", "value")
        if not np.all(np.isfinite(rewards)):
            raise ProtocolError("rewards are not finite as float32", "value")
        ends = arrays["terminated"] | arrays["truncated"]
        if np.any(ends[:-1]):
            raise ProtocolError("an episode may end only at the last step of a chunk", "value")
        next_obs = _observations(arrays, NEXT_OBS_PREFIX, spec, (steps,), max_abs_observation)
        first = _observations(arrays, FIRST_OBS_PREFIX, spec, (), max_abs_observation) if step == 0 else None
        extra = sorted(k for k in arrays if k not in STEP_ARRAYS and not k.startswith((NEXT_OBS_PREFIX, FIRST_OBS_PREFIX)))
        if extra or (step != 0 and any(k.startswith(FIRST_OBS_PREFIX) for k in arrays)):
            raise ProtocolError(f"unexpected arrays {extra[:8] or ['obs0/* after step 0']}", "array")
        return cls(episode, step, np.clip(actions, -action_bound, action_bound), rewards,
                   arrays["terminated"].astype(bool), arrays["truncated"].astype(bool),
                   arrays["intervened"].astype(bool), arrays["success"].astype(bool), next_obs, first, source)


def _observations(arrays: Mapping[str, np.ndarray], prefix: str, spec: ObservationSpec,
                  lead: tuple[int, ...], max_abs: float) -> dict[str, np.ndarray]:
    found = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    if set(found) != set(spec):
        raise ProtocolError(f"observation keys {sorted(found)[:8]} != expected {sorted(spec)}", "array")
    for key, (shape, dtype) in spec.items():
        value = found[key]
        if value.shape != (*lead, *shape) or value.dtype != np.dtype(dtype):
            raise ProtocolError(f"observation '{prefix}{key}' is {value.dtype}{value.shape}, expected "
                                f"{np.dtype(dtype)}{(*lead, *shape)}", "array")
        if value.dtype.kind == "f":
            if not np.all(np.isfinite(value)):
                raise ProtocolError(f"observation '{prefix}{key}' is not finite", "value")
            if value.size and float(np.abs(value).max()) > max_abs:
                raise ProtocolError(f"observation '{prefix}{key}' reaches {float(np.abs(value).max()):.3g}, beyond "
                                    f"transport.max_abs_observation={max_abs:g}", "value")
        elif value.dtype.kind in "iu" and value.dtype.itemsize > 1 and value.size:
            if max(abs(int(value.max())), abs(int(value.min()))) > max_abs:
                raise ProtocolError(f"observation '{prefix}{key}' is beyond transport.max_abs_observation="
                                    f"{max_abs:g}", "value")
    return found
