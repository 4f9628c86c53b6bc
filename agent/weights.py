"""Published ImageNet-pretrained backbones: where they are, how they are pinned, and fetching them.

`fetch_weights("resnet10")` downloads a published file into the weights cache
(`$FRANKA_RL_WEIGHTS_DIR`, default `~/.cache/franka_rl/weights`), verifies its sha256 against the
pin, converts it into this project's native `.npz` (agent/pretrained.py) and returns that file's
path: the value for `agent.encoder.pretrained_path` and `classifier.pretrained_path`.

The pins. A pin is only as good as its source, so none is made up here:
- torchvision publishes the first 8 hex digits of each file's sha256 in its file name
  (`resnet18-f37072fd.pth`) and checks only that prefix itself; that prefix is what is pinned.
- SERL publishes `resnet10_params.pkl` without a hash on its release page. The pin below is the
  sha256 that several independent public HIL-SERL deployments record for the file at that address
  (21,677,915 bytes); it was not measured here (no internet on this project's machines). `--sha256
  HEX` overrides it, e.g. with `sha256sum` of a copy you already use.
Whatever was verified, the full sha256 of the source file is stored in the converted file's record.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.pretrained import (
    CONVERSION_VERSION,
    PretrainedWeightsError,
    import_published,
    read_native_meta,
    save_native,
)

WEIGHTS_DIR_ENV = "FRANKA_RL_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = "~/.cache/franka_rl/weights"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class WeightsDownloadError(PretrainedWeightsError):
    """A download failed (network, HTTP status, truncated file, hash mismatch); nothing was kept."""


@dataclass(frozen=True)
class PublishedWeights:
    name: str
    backbone: str
    url: str
    # The file name the source is cached under.
    filename: str
    # Full sha256 of the published file, or None where no trusted full hash is known (then
    # `sha256_prefix`, or the user's --sha256, is what gets verified).
    sha256: str | None
    # A prefix of the sha256 that the publisher states (torchvision's file names); "" if none.
    sha256_prefix: str
    description: str


REGISTRY: dict[str, PublishedWeights] = {
    "resnet10": PublishedWeights(
        name="resnet10", backbone="resnet10",
        url="https://github.com/rail-berkeley/serl/releases/download/resnet10/resnet10_params.pkl",
        filename="resnet10_params.pkl",
        sha256="175745d43d30233eb01b5369465d1c24c11b8ee71ccb734cc1c1bca13e07f57b", sha256_prefix="",
        description="SERL's ImageNet-pretrained ResNet-10, a pickled Flax param tree (the pin: the hash public "
                    "HIL-SERL deployments record for it)",
    ),
    "resnet18": PublishedWeights(
        name="resnet18", backbone="resnet18",
        url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
        filename="resnet18-f37072fd.pth", sha256=None, sha256_prefix="f37072fd",
        description="torchvision's ImageNet ResNet-18 (IMAGENET1K_V1 state dict)",
    ),
    "resnet34": PublishedWeights(
        name="resnet34", backbone="resnet34",
        url="https://download.pytorch.org/models/resnet34-b627a593.pth",
        filename="resnet34-b627a593.pth", sha256=None, sha256_prefix="b627a593",
        description="torchvision's ImageNet ResNet-34 (IMAGENET1K_V1 state dict)",
    ),
}


def weights_dir(dest: str | os.PathLike | None = None) -> Path:
    """`dest`, else $FRANKA_RL_WEIGHTS_DIR, else ~/.cache/franka_rl/weights (user-expanded)."""
    chosen = dest if dest else os.environ.get(WEIGHTS_DIR_ENV) or DEFAULT_WEIGHTS_DIR
    return Path(chosen).expanduser()


def native_filename(name: str) -> str:
    return f"{name}.npz"


def default_native_path(name: str) -> str:
    """The converted file's path in the default cache, unexpanded: what configs name."""
    return f"{DEFAULT_WEIGHTS_DIR}/{native_filename(name)}"


def published(name: str) -> PublishedWeights:
    if name not in REGISTRY:
        raise PretrainedWeightsError(f"unknown weights '{name}'; choose one of {sorted(REGISTRY)}")
    return REGISTRY[name]


def normalise_sha256(value: str) -> str:
    hexdigest = value.strip().lower()
    if not _HEX64.fullmatch(hexdigest):
        raise PretrainedWeightsError(f"--sha256 must be 64 hex digits (a full sha256), got '{value}'")
    return hexdigest


@dataclass(frozen=True)
class Pin:
    """What a download is checked against: a full sha256, or the publisher's prefix of one."""

    sha256: str | None
    prefix: str

    def matches(self, digest: str) -> bool:
        if self.sha256 is not None:
            return digest == self.sha256
        return bool(self.prefix) and digest.startswith(self.prefix)

    def describe(self) -> str:
        if self.sha256 is not None:
            return f"sha256 {self.sha256}"
        return f"sha256 prefix {self.prefix} (the publisher states only these {len(self.prefix)} hex digits)"


def pin_for(entry: PublishedWeights, sha256: str | None) -> Pin:
    if sha256:
        return Pin(normalise_sha256(sha256), "")
    if entry.sha256:
        return Pin(entry.sha256, "")
    if entry.sha256_prefix:
        return Pin(None, entry.sha256_prefix)
    raise PretrainedWeightsError(
        f"no sha256 is pinned for {entry.name} ({entry.description}): pass --sha256 HEX from a source you trust, "
        f"or download {entry.url} yourself and run `franka-rl weights convert FILE --backbone {entry.backbone}`")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def download(url: str, target: Path, pin: Pin, *, timeout: float = 30.0, progress: bool = True) -> str:
    """Download `url` to `target` through a temporary `.part` file, verify it against `pin`, and
    return its sha256. On any failure the partial file is deleted and WeightsDownloadError says why
    in one line."""
    from robot_env.progress import progress as progress_bar

    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    received = 0
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s)/file URLs the user names
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                with open(part, "wb") as f, progress_bar(total=total, unit="B", unit_scale=True,
                                                         unit_divisor=1024, desc=target.name, leave=False,
                                                         disable=not progress) as bar:
                    while chunk := response.read(1 << 20):
                        f.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        except urllib.error.HTTPError as exc:
            raise WeightsDownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise WeightsDownloadError(f"cannot download {url}: {_reason(exc.reason)}; {_OFFLINE_HINT}") from None
        except http.client.IncompleteRead as exc:
            got = received + len(exc.partial)
            raise WeightsDownloadError(
                f"download of {url} is incomplete: the connection closed after {got} of "
                f"{got + (exc.expected or 0)} bytes; run the command again") from None
        except TimeoutError:
            raise WeightsDownloadError(f"download of {url} stalled for {timeout:g} s after {received} bytes; "
                                       "run the command again or raise --timeout") from None
        except (http.client.HTTPException, OSError) as exc:
            raise WeightsDownloadError(f"download of {url} failed after {received} bytes: {_reason(exc)}; "
                                       "run the command again") from None
        if total is not None and received != total:  # read(amt) returns b"" at a premature end
            raise WeightsDownloadError(f"download of {url} is incomplete: the connection closed after {received} "
                                       f"of {total} bytes; run the command again")
        hexdigest = digest.hexdigest()
        if not pin.matches(hexdigest):
            raise WeightsDownloadError(f"{url}: sha256 {hexdigest} does not match the pinned {pin.describe()}; "
                                       "the file was deleted (a wrong --url or --sha256, or a changed file)")
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    return hexdigest


_OFFLINE_HINT = ("check the network (or pass --url to a mirror); on an offline PC, run the fetch on a machine "
                 "with internet and copy the .npz it prints (docs/hardware.md, 'Pretrained weights')")


def _reason(reason: object) -> str:
    if isinstance(reason, BaseException):
        text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    else:
        text = str(reason)
    return " ".join(text.split())


def convert_file(src: str | os.PathLike, backbone: str, out: str | os.PathLike, *, source_url: str = "",
                 source_sha256: str | None = None, name: str | None = None) -> Path:
    """Read a published file (SERL pickle or torchvision state dict), check it against the built
    `backbone` and write the native `.npz` at `out` with its record."""
    src = Path(src).expanduser()
    if not src.is_file():
        raise PretrainedWeightsError(f"{src} not found")
    params = import_published(src, backbone)
    meta = {
        "backbone": backbone,
        "name": name or backbone,
        "source_url": source_url or src.resolve().as_uri(),
        "source_file": src.name,
        "source_sha256": source_sha256 or sha256_of(src),
    }
    return save_native(Path(out).expanduser(), params, meta)


def _current(native: Path, backbone: str, pin: Pin) -> bool:
    """Whether `native` already holds a conversion of a file matching `pin`, by this version."""
    try:
        meta = read_native_meta(native)
    except PretrainedWeightsError:
        return False
    return (meta.get("backbone") == backbone and meta.get("conversion_version") == CONVERSION_VERSION
            and pin.matches(str(meta.get("source_sha256", ""))))


def fetch_weights(name: str, *, dest: str | os.PathLike | None = None, url: str | None = None,
                  sha256: str | None = None, timeout: float = 30.0, progress: bool = True,
                  report: Callable[[str], None] = _stderr) -> Path:
    """Download, verify and convert the published weights `name`; return the native file's path.
    A native file that already converts a matching source is kept as it is."""
    entry = published(name)
    pin = pin_for(entry, sha256)
    directory = weights_dir(dest)
    native = directory / native_filename(name)
    if native.is_file() and _current(native, entry.backbone, pin):
        report(f"{native} already holds {entry.name} ({pin.describe()} verified when it was fetched)")
        return native
    source = directory / entry.filename
    source_url = url or entry.url
    cached = sha256_of(source) if source.is_file() else ""
    if cached and pin.matches(cached):
        report(f"using {source} (already downloaded; {pin.describe()} matches)")
        hexdigest = cached
    else:
        report(f"downloading {entry.description}\n  from {source_url}\n  to {source}")
        hexdigest = download(source_url, source, pin, timeout=timeout, progress=progress)
        report(f"verified {pin.describe()}" + ("" if pin.sha256 else f"; full sha256 {hexdigest}"))
    convert_file(source, entry.backbone, native, source_url=source_url, source_sha256=hexdigest, name=name)
    return native
