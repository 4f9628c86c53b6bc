"""CURVE keys for links that leave the host: encryption plus a list of admitted actors.

Certificates are pyzmq's own files (`zmq.auth.create_certificates`): `<name>.key` holds the public
key, `<name>.key_secret` both keys. The learner admits exactly the actors whose public
certificates sit in `transport.curve_authorized_clients_dir` (checked by a ZAP authenticator
thread); a client without CURVE, or with a key not in that directory, never gets a message through.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from agent.process_config import TransportConfig
from robot_env.errors import UserError


class TransportError(UserError, RuntimeError):
    """A transport setting or peer problem the user can fix (keys, addresses, refusals)."""


def _load(path: str, key: str, secret: bool) -> tuple[bytes, bytes | None]:
    if not path:
        raise TransportError(f"transport.curve is on but {key} is empty: run `franka-rl transport-keys DIR` "
                             "and point the transport.curve_* keys at the files it writes")
    file = Path(path)
    if not file.is_file():
        raise TransportError(f"{key}: certificate file {file} not found (`franka-rl transport-keys DIR` writes them)")
    try:
        public, secret_key = zmq.auth.load_certificate(file)
    except (ValueError, OSError) as exc:
        raise TransportError(f"{key}: {file} is not a pyzmq certificate ({exc})") from None
    if secret and secret_key is None:
        raise TransportError(f"{key}: {file} holds no secret key; use the .key_secret file")
    return public, secret_key


def secure_server(context: zmq.Context, socket: zmq.Socket, cfg: TransportConfig) -> ThreadAuthenticator | None:
    """Make `socket` a CURVE server admitting only the configured actors (before bind)."""
    if not cfg.curve:
        return None
    public, secret = _load(cfg.curve_server_secret_file, "transport.curve_server_secret_file", secret=True)
    clients = Path(cfg.curve_authorized_clients_dir)
    if not cfg.curve_authorized_clients_dir or not clients.is_dir():
        raise TransportError("transport.curve_authorized_clients_dir must name a directory holding the "
                             f"actors' public .key files (got '{cfg.curve_authorized_clients_dir}')")
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve(domain="*", location=str(clients))
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True
    return authenticator


def secure_client(socket: zmq.Socket, cfg: TransportConfig) -> None:
    """Give `socket` this actor's key pair and the learner's public key (before connect)."""
    if not cfg.curve:
        return
    public, secret = _load(cfg.curve_client_secret_file, "transport.curve_client_secret_file", secret=True)
    server_public, _ = _load(cfg.curve_server_public_file, "transport.curve_server_public_file", secret=False)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = server_public


def generate_keys(directory: str | Path, actors: list[str]) -> dict[str, Path]:
    """Write a learner certificate and one per actor under `directory`, and admit those actors.

    Layout: learner.key / learner.key_secret, <actor>.key / <actor>.key_secret, and
    authorized_actors/<actor>.key (the directory the learner reads). An existing learner
    certificate is kept (so actors can be added later); an existing actor's is never overwritten.
    """
    root = Path(directory)
    authorized = root / "authorized_actors"
    authorized.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    names = list(actors) if (root / "learner.key_secret").exists() else ["learner", *actors]
    for name in names:
        if (root / f"{name}.key_secret").exists():
            raise TransportError(f"{root / (name + '.key_secret')} exists; refusing to overwrite a key")
        public, secret = zmq.auth.create_certificates(root, name)
        written[name] = Path(secret)
        if name != "learner":
            shutil.copy(public, authorized / Path(public).name)
    return written
