"""Actor <-> learner transport over ZeroMQ: typed, versioned messages of raw arrays (no pickle),
handshakes, heartbeats, acknowledgements with resend, optional CURVE. See docs/processes.md."""

from agent.transport.client import ActorClient
from agent.transport.protocol import (
    PROTOCOL_VERSION,
    Message,
    MessageType,
    ProtocolError,
    TransitionChunk,
    decode,
    encode,
)
from agent.transport.security import TransportError, generate_keys
from agent.transport.server import Delivery, LearnerServer, Watermarks

__all__ = [
    "PROTOCOL_VERSION",
    "ActorClient",
    "Delivery",
    "LearnerServer",
    "Message",
    "MessageType",
    "ProtocolError",
    "TransitionChunk",
    "TransportError",
    "Watermarks",
    "decode",
    "encode",
    "generate_keys",
]
