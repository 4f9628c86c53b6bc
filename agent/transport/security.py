"""CURVE keys for links that leave the host: encryption plus a list of admitted actors.

Certificates are pyzmq's own file format (`zmq.auth.load_certificate` reads them): `<name>.key`
holds the public key, `<name>.key_secret` both keys. The learner admits exactly the actors whose
public certificates sit in `transport.curve_authorized_clients_dir` (checked by a ZAP
authenticator thread); a client without CURVE, or with a key not in that directory, never gets a
message through. Secret certificates are written 0600 (created so, never widened afterwards); a
secret certificate that other users can read is loaded with a warning.

A learner bound to a non-loopback address requires CURVE unless `transport.insecure=true`
(`require_secure_bind`); `authorized_ids` maps `<actor id>.key` files to their keys so that such
an id can be claimed by that key only.
"""

from __future__ import annotations

import datetime
import logging
import os
import stat
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from agent.process_config import TransportConfig, insecure_bind_message, is_loopback
from robot_env.errors import UserError

log = logging.getLogger("agent.transport")

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


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
    if secret_key is not None:
        warn_if_readable_by_others(file)
    return public, secret_key


def warn_if_readable_by_others(file: Path) -> bool:
    """Warn (and return True) when a secret certificate grants any access beyond its owner."""
    mode = stat.S_IMODE(file.stat().st_mode)
    if mode & 0o077:
        log.warning("transport: secret key %s has mode %o: other users can read it; run `chmod 600 %s`",
                    file, mode, file)
        return True
    return False


def require_secure_bind(cfg: TransportConfig) -> None:
    """Refuse a non-loopback bind without CURVE (unless transport.insecure); warn when insecure."""
    if cfg.curve or is_loopback(cfg.bind_host):
        return
    if not cfg.insecure:
        raise TransportError(insecure_bind_message(cfg.bind_host))
    log.warning("transport: listening on %s without CURVE (transport.insecure=true): any host that reaches this "
                "port and knows the config hash can send transitions", cfg.bind_host)


def authorized_ids(directory: str | Path) -> dict[str, str]:
    """`<actor id>.key` in the admitted-actors directory -> that certificate's public key (z85)."""
    ids: dict[str, str] = {}
    for file in sorted(Path(directory).glob("*.key")):
        try:
            public, _ = zmq.auth.load_certificate(file)
        except (ValueError, OSError):
            continue  # the authenticator skips it too
        ids[file.stem] = public.decode("ascii")
    return ids


def secure_server(context: zmq.Context, socket: zmq.Socket, cfg: TransportConfig) -> ThreadAuthenticator | None:
    """Make `socket` a CURVE server admitting only the configured actors (before bind)."""
    require_secure_bind(cfg)
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


_BANNER = ("#   ****  Generated on {when} by franka-rl transport-keys  ****\n"
           "#   ZeroMQ CURVE {kind} Certificate\n"
           "#   {advice}\n\n")


def _write_certificate(path: Path, public: bytes, secret: bytes | None) -> None:
    """One certificate file in pyzmq's format, created with its final mode (O_EXCL: never over
    an existing file, and a secret never exists with wider permissions, not even briefly)."""
    kind, advice = (("**Secret**", "DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.")
                    if secret else ("Public", "Exchange securely, or use a secure mechanism to verify the contents."))
    text = _BANNER.format(when=datetime.datetime.now().isoformat(timespec="seconds"), kind=kind, advice=advice)
    text += f'metadata\ncurve\n    public-key = "{public.decode("ascii")}"\n'
    if secret:
        text += f'    secret-key = "{secret.decode("ascii")}"\n'
    mode = SECRET_MODE if secret else PUBLIC_MODE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; a public key stays readable
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def generate_keys(directory: str | Path, actors: list[str]) -> dict[str, Path]:
    """Write a learner certificate and one per actor under `directory`, and admit those actors.

    Layout: learner.key / learner.key_secret (0600), <actor>.key / <actor>.key_secret (0600), and
    authorized_actors/<actor>.key (the directory the learner reads; the file name binds the actor
    id to that key). An existing learner certificate is kept (so actors can be added later); an
    existing actor's is never overwritten.
    """
    root = Path(directory)
    authorized = root / "authorized_actors"
    authorized.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    names = list(actors) if (root / "learner.key_secret").exists() else ["learner", *actors]
    for name in names:
        if (root / f"{name}.key_secret").exists() or (root / f"{name}.key").exists():
            raise TransportError(f"{root / (name + '.key_secret')} exists; refusing to overwrite a key")
        public, secret = zmq.curve_keypair()
        _write_certificate(root / f"{name}.key", public, None)
        _write_certificate(root / f"{name}.key_secret", public, secret)
        written[name] = root / f"{name}.key_secret"
        if name != "learner":
            admitted = authorized / f"{name}.key"
            admitted.unlink(missing_ok=True)
            _write_certificate(admitted, public, None)
    return written
