"""Agent checkpoints with orbax: atomic, resumable, and checked against the architecture.

A checkpoint directory holds numbered steps (`<dir>/<step>/`); orbax writes each into a temporary
directory and renames it when complete, so a crash never leaves a half-written step that
`latest_step` would pick. Every step stores:
- `state`: the agent's whole pytree (actor, critics, target critics, temperature, CQL Lagrange
  multiplier, optimizer moments, frozen backbone, RNG);
- `meta`: JSON with the agent config (if given), a shape summary and any caller data (e.g. env
  steps), so a mismatch can be explained in terms of config keys.

Restoring into an agent of a different architecture raises `CheckpointMismatchError` naming the
mismatching parameters and, when the checkpoint has its config, the differing config keys.

Integrity. Once orbax has finished a step, a manifest (`<dir>/<step>/franka_rl_manifest.json`:
sha256 and size of every file of the step) is written last, atomically (temporary name, fsync,
rename). Restoring verifies it first, so bit flips or a truncated file are reported as
`CheckpointCorruptError` instead of restoring silently different parameters. The step's `meta`
says `"manifest": true`, so a step that lost its manifest is refused too; steps written before
manifests existed (no such key) are restored unverified, with one warning. `restore(step=None)`
falls back to the newest step that verifies, saying so in one warning line. Pruning to
`max_to_keep` happens only after a new step has its manifest, and a save that fails (e.g. a full
disk) removes what it wrote (`CheckpointWriteError`), so a partial step never replaces a good one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from agent.config import AgentConfig
from agent.core import Agent, has_value_net
from agent.data.episodes import fsync_directory
from robot_env.errors import UserError

_log = logging.getLogger(__name__)

_ARCHITECTURE_SECTIONS = ("network", "encoder")
# Opening a folder whose steps another process is pruning: this many scans before giving up.
_OPEN_ATTEMPTS = 5
# Single keys outside those sections that change the pytree: IQL's value net exists only with it;
# an Off2On ensemble stacks `ensemble_size` agents on a leading axis (its shapes show N).
_ARCHITECTURE_KEYS = (("iql", "enabled"), ("off2on", "enabled"))


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read (missing, corrupt)."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose parameters do not fit the agent being restored."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint whose files do not match its manifest (bit flips, truncation) or cannot be read."""


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint that could not be written (full disk, unwritable folder); nothing partial is left."""


MANIFEST_NAME = "franka_rl_manifest.json"
MANIFEST_FORMAT = "franka_rl.checkpoint_manifest"
_ORBAX_TEMP_MARK = ".orbax-checkpoint-tmp"
# Beyond the arrays' bytes, a step holds orbax metadata, the meta JSON and the manifest.
_SAVE_OVERHEAD_BYTES = 256 * 1024


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomically(path: Path, payload: dict) -> None:
    """Write JSON under a temporary name, fsync, rename; a failure leaves no temporary file."""
    temp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the filesystem holding `path` (or its nearest existing parent); None if unknown."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def describe_write_failure(folder: str | Path, exc: BaseException) -> str:
    """'<folder>: <reason> (<n> bytes free)' for one-line disk error messages."""
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    else:
        text = str(exc) or type(exc).__name__
        known = [w for w in ("No space left on device", "Disk quota exceeded", "Read-only file system",
                             "Permission denied") if w.lower() in text.lower()]
        reason = known[0] if known else text.splitlines()[0][:200]
    free = free_bytes(folder)
    return f"{folder}: {reason} ({'unknown' if free is None else free} bytes free)"


def _is_disk_error(exc: BaseException) -> bool:
    """Whether an exception (orbax/tensorstore wrap OSErrors in their own types) is a write failure."""
    if isinstance(exc, OSError):
        return True
    text = str(exc).lower()
    return any(word in text for word in ("no space left", "disk quota", "read-only file system",
                                         "permission denied", "errno 28", "enospc"))



def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    else:
        out[prefix] = tree
    return out


def _shape_of(leaf: Any) -> tuple[tuple[int, ...], str]:
    shape = tuple(getattr(leaf, "shape", np.shape(leaf)))
    dtype = str(getattr(leaf, "dtype", np.asarray(leaf).dtype))
    return shape, dtype


def state_dict(agent: Agent) -> dict:
    """The agent's leaves as a nested dict of NumPy arrays (static fields are not part of it)."""
    tree = serialization.to_state_dict(agent)
    return jax.tree.map(np.asarray, tree)


def _drop_empty(tree: Any) -> Any:
    if isinstance(tree, dict):
        kept = {k: _drop_empty(v) for k, v in tree.items()}
        return {k: v for k, v in kept.items() if not (isinstance(v, dict) and not v)}
    return tree


def _restore_empty(template: Any, restored: Any) -> Any:
    if isinstance(template, dict):
        restored = restored or {}
        return {k: _restore_empty(v, restored.get(k)) for k, v in template.items()}
    return restored


def architecture_summary(agent: Agent) -> dict[str, list]:
    return {path: list(_shape_of(leaf)[0]) for path, leaf in _flatten(state_dict(agent)).items()}


def _config_diff(saved: dict | None, current: AgentConfig | None) -> list[str]:
    if not saved or current is None:
        return []
    now = dataclasses.asdict(current)
    lines = []
    for section in _ARCHITECTURE_SECTIONS:
        for key, value in now.get(section, {}).items():
            before = saved.get(section, {}).get(key)
            if before is not None and before != value:
                lines.append(f"agent.{section}.{key}: checkpoint {before!r}, now {value!r}")
    for section, key in _ARCHITECTURE_KEYS:
        before, value = saved.get(section, {}).get(key, False), now.get(section, {}).get(key)
        if before != value:
            lines.append(f"agent.{section}.{key}: checkpoint {before!r}, now {value!r}")
    return lines


def compare_architecture(expected: dict, found: dict) -> list[str]:
    """Differences between two flat {path: (shape, dtype)} maps, as readable lines."""
    lines = []
    for path in sorted(set(expected) - set(found)):
        lines.append(f"{path}: missing from the checkpoint (expected shape {expected[path][0]})")
    for path in sorted(set(found) - set(expected)):
        lines.append(f"{path}: in the checkpoint (shape {found[path][0]}) but not in this agent")
    for path in sorted(set(expected) & set(found)):
        if tuple(expected[path][0]) != tuple(found[path][0]):
            lines.append(f"{path}: checkpoint shape {tuple(found[path][0])}, this agent {tuple(expected[path][0])}")
    return lines


class AgentCheckpointer:
    """Save and restore agents under one directory, keeping the newest `max_to_keep` steps."""

    def __init__(self, directory: str | Path, max_to_keep: int | None = 3):
        self.directory = Path(directory).absolute()
        self.max_to_keep = max_to_keep
        # Pruning is ours (after the manifest), so orbax keeps everything it is given.
        options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True, enable_async_checkpointing=False)
        for attempt in range(_OPEN_ATTEMPTS):
            try:
                self._manager = ocp.CheckpointManager(self.directory, options=options)
                break
            except Exception as exc:
                # A reader opening the folder while its learner prunes a step sees that step vanish
                # mid-scan (FileNotFoundError inside an existing folder): look again.
                if (isinstance(exc, FileNotFoundError) and self.directory.is_dir()
                        and attempt + 1 < _OPEN_ATTEMPTS):
                    time.sleep(0.05 * (attempt + 1))
                    continue
                if _is_disk_error(exc):
                    raise CheckpointWriteError(
                        f"cannot create the checkpoint folder {describe_write_failure(self.directory, exc)}") from None
                raise
        # Temporaries are not removed here: a reader (eval, a pipeline polling) must never delete
        # the in-flight save of the process that owns the directory. The owner calls
        # `remove_temporaries()` at start; a failed save removes its own.
        self.restored_step: int | None = None

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def finished_steps(self) -> list[int]:
        """The steps whose save finished: their manifest is written (or they predate manifests).

        Orbax makes a step's folder visible before the manifest is written, so a reader of a live
        run (an evaluation, a pipeline, a test polling the learner) can see a step that is still
        being saved, and a writer killed mid-save leaves one that way for good. Neither is
        readable; the newest finished step is. Checksums are checked when a step is read."""
        finished = []
        for step in self.all_steps():
            if (self.step_directory(step) / MANIFEST_NAME).exists():
                finished.append(step)
                continue
            try:
                meta = self._read_meta_unverified(step)
            except CheckpointError:
                continue  # pruned while we looked, or unreadable: not a step to read
            if not meta.get("manifest"):
                finished.append(step)
        return finished

    def step_directory(self, step: int) -> Path:
        return self.directory / str(int(step))

    def remove_temporaries(self, step: int | None = None) -> list[Path]:
        """Delete what an interrupted or failed save left behind (orbax temporaries, manifest
        temps): of step `step`, or of every step (only the directory's one writer may do that)."""
        removed = []
        if not self.directory.is_dir():
            return removed
        for entry in self.directory.iterdir():
            if _ORBAX_TEMP_MARK in entry.name and (step is None or entry.name.startswith(f"{int(step)}.")):
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                removed.append(entry)
        for leftover in self.directory.glob(f"{'*' if step is None else int(step)}/.tmp-{MANIFEST_NAME}-*"):
            leftover.unlink(missing_ok=True)
        return removed

    def reload(self) -> None:
        """Re-read the step list (after steps were moved aside)."""
        self._manager.reload()

    def save(self, step: int, agent: Agent, config: AgentConfig | None = None, extra: dict | None = None,
             before_manifest: Callable[[Path], None] | None = None) -> Path:
        """Write `agent` as step `step` (blocking; atomic; verified by a manifest written last).
        `before_manifest(step_directory)` may add files to the step (they are in the manifest);
        if it raises, the step is discarded. Returns the step's directory. A failure
        (CheckpointWriteError when the disk refuses) leaves no trace of this step; older steps
        are untouched."""
        step = int(step)
        meta = {
            "agent_config": dataclasses.asdict(config) if config is not None else None,
            "architecture": architecture_summary(agent),
            "extra": extra or {},
            "manifest": True,
        }
        directory = self.step_directory(step)
        state = _drop_empty(state_dict(agent))
        # Orbax fails noisily (tracebacks from its writer threads) on a full disk: look first.
        needed = sum(int(np.asarray(x).nbytes) for x in jax.tree.leaves(state)) + _SAVE_OVERHEAD_BYTES
        free = free_bytes(self.directory)
        if free is not None and free < needed:
            raise CheckpointWriteError(f"checkpoint {step} not written: {self.directory}: not enough space "
                                       f"(needs about {needed} bytes, {free} bytes free)")
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                force=True,
            )
            self._manager.wait_until_finished()
            if before_manifest is not None:
                before_manifest(directory)
            self._write_manifest(step)
        except BaseException as exc:
            self._discard_step(step)
            if isinstance(exc, CheckpointWriteError):
                raise
            if isinstance(exc, Exception) and _is_disk_error(exc):
                raise CheckpointWriteError(
                    f"checkpoint {step} not written: {describe_write_failure(self.directory, exc)}") from None
            raise
        self._prune()
        return directory

    def _write_manifest(self, step: int) -> None:
        directory = self.step_directory(step)
        files = {}
        for path in sorted(directory.rglob("*")):
            if path.is_file() and path.name != MANIFEST_NAME and not path.name.startswith(f".tmp-{MANIFEST_NAME}"):
                files[path.relative_to(directory).as_posix()] = {"sha256": sha256_file(path),
                                                                 "bytes": path.stat().st_size}
        write_json_atomically(directory / MANIFEST_NAME,
                              {"format": MANIFEST_FORMAT, "version": 1, "step": step, "files": files})

    def _discard_step(self, step: int) -> None:
        try:
            if step in self._manager.all_steps():
                self._manager.delete(step)
        except Exception:  # the step may be half there; remove it by hand below
            pass
        shutil.rmtree(self.step_directory(step), ignore_errors=True)
        self.remove_temporaries(step)
        try:
            self._manager.reload()
        except Exception:
            pass

    def _prune(self) -> None:
        if self.max_to_keep is None:
            return
        steps = self.all_steps()
        for old in steps[:-self.max_to_keep] if len(steps) > self.max_to_keep else []:
            self._manager.delete(old)

    def verify(self, step: int) -> bool:
        """Check step `step`'s files against its manifest. Returns True when verified, False for
        a step written before manifests existed; raises CheckpointCorruptError otherwise."""
        directory = self.step_directory(step)
        manifest_path = directory / MANIFEST_NAME
        where = f"checkpoint {directory}"
        if not manifest_path.exists():
            try:
                meta = self._read_meta_unverified(step)
            except CheckpointError as exc:
                raise CheckpointCorruptError(f"{where}: no checksum manifest and {exc}") from None
            if meta.get("manifest"):
                raise CheckpointCorruptError(f"{where}: its checksum manifest is missing (the save did not "
                                             "finish: still being written, or its writer stopped mid-save)")
            return False
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            files = manifest["files"]
            if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
                raise ValueError("not a checkpoint manifest")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointCorruptError(f"{where}: unreadable checksum manifest ({exc})") from None
        for name, entry in files.items():
            path = directory / name
            if not path.is_file():
                raise CheckpointCorruptError(f"{where}: {name} is missing")
            size = path.stat().st_size
            if size != entry.get("bytes"):
                raise CheckpointCorruptError(f"{where}: {name} has {size} bytes, the manifest says {entry.get('bytes')}")
            if sha256_file(path) != entry.get("sha256"):
                raise CheckpointCorruptError(f"{where}: {name} does not match its sha256 (corrupt)")
        return True

    def _read_meta_unverified(self, step: int) -> dict:
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as exc:  # orbax raises several types for unreadable files
            raise CheckpointCorruptError(f"cannot read checkpoint {self.directory}/{step}: {exc}") from None
        meta = restored["meta"]
        if not isinstance(meta, dict):
            raise CheckpointCorruptError(f"checkpoint {self.directory}/{step}: its metadata is not a JSON object")
        return meta

    def read_meta(self, step: int | None = None, *, verify: bool = True) -> dict:
        step = self._resolve(step)
        if verify and not self.verify(step):
            _log.warning("checkpoint %s/%s has no checksum manifest (written by an older version); read unverified",
                         self.directory, step)
        return self._read_meta_unverified(step)

    def restore(self, template: Agent, step: int | None = None, config: AgentConfig | None = None, *,
                value_optional: bool = False) -> tuple[Agent, dict]:
        """Restore step `step` (default: the newest usable one) into an agent shaped like `template`.

        `value_optional`: a template with IQL's value net also restores a checkpoint without one
        (an online learner's, whose WSRL switch dropped it); the agent returned then has none.
        Evaluation sets it, so `--preset wsrl_iql` evaluates pre-training and learner checkpoints.

        Returns (agent, extra). Raises CheckpointMismatchError when the shapes differ and
        CheckpointCorruptError when the step's files fail their checksums. With `step=None` a
        corrupt newest step falls back to the previous one, with one warning line."""
        if step is not None:
            restored = self._restore_step(template, self._resolve(step), config, value_optional)
            self.restored_step = step
            return restored
        problems = []
        for candidate in reversed(self.all_steps()):
            try:
                restored = self._restore_step(template, candidate, config, value_optional)
            except CheckpointMismatchError:
                raise
            except CheckpointError as exc:
                problems.append(str(exc))
                continue
            if problems:
                _log.warning("%s; restored checkpoint %s instead", "; ".join(problems), candidate)
            self.restored_step = candidate
            return restored
        self._resolve(None)  # raises "no checkpoint" when there is none
        raise CheckpointCorruptError(f"no usable checkpoint in {self.directory}: {'; '.join(problems)}. "
                                     "Train again, or point to another checkpoint directory")

    def _restore_step(self, template: Agent, step: int, config: AgentConfig | None,
                      value_optional: bool = False) -> tuple[Agent, dict]:
        meta = self.read_meta(step)
        found = {p: (tuple(shape), "") for p, shape in meta.get("architecture", {}).items()}
        if value_optional and has_value_net(template) and not any(p.startswith("value.") for p in found):
            template = template.replace(value={})
        expected = {p: _shape_of(leaf) for p, leaf in _flatten(_drop_empty(state_dict(template))).items()}
        problems = compare_architecture(expected, found)
        if problems:
            raise CheckpointMismatchError(self._mismatch_message(step, problems, meta, config))
        target = _drop_empty(state_dict(template))
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), target)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        except Exception as exc:
            raise CheckpointCorruptError(
                f"cannot restore checkpoint {self.directory}/{step}: {exc}. "
                "The files may be corrupt; try an earlier step (see its directory listing)."
            ) from None
        state = _restore_empty(state_dict(template), restored["state"])
        agent = serialization.from_state_dict(template, state)
        return agent, meta.get("extra", {})

    def _resolve(self, step: int | None) -> int:
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}: train first or point to the right directory")
        if step is None:
            return max(steps)
        if step not in steps:
            raise CheckpointError(f"no step {step} in {self.directory}; available: {sorted(steps)}")
        return step

    def _mismatch_message(self, step: int, problems: list[str], meta: dict, config: AgentConfig | None) -> str:
        # Parameters first: optimizer moments mirror them and only repeat the same news.
        problems = sorted(problems, key=lambda line: ("opt_state" in line.split(":")[0], line))
        shown = problems[:8]
        more = f" (and {len(problems) - len(shown)} more)" if len(problems) > len(shown) else ""
        paths = [p.split(":")[0] for p in problems]
        paths = [p for p in paths if "opt_state" not in p] or paths
        parts = sorted({".".join(p.split(".")[:3]) for p in paths})
        lines = [
            f"checkpoint {self.directory}/{step} does not fit this agent's architecture "
            f"(mismatching parts: {', '.join(parts)}):",
            *[f"  {line}" for line in shown],
        ]
        if more:
            lines.append(f"  {more.strip()}")
        config_lines = _config_diff(meta.get("agent_config"), config)
        if config_lines:
            lines.append("  config keys that differ from the checkpoint's:")
            lines.extend(f"    {line}" for line in config_lines)
        lines.append("  Use the agent config the checkpoint was trained with, or start from scratch.")
        return "\n".join(lines)


def save_agent(directory: str | Path, step: int, agent: Agent, config: AgentConfig | None = None,
               extra: dict | None = None) -> Path:
    return AgentCheckpointer(directory).save(step, agent, config, extra)


def restore_agent(directory: str | Path, template: Agent, step: int | None = None,
                  config: AgentConfig | None = None) -> tuple[Agent, dict]:
    return AgentCheckpointer(directory, max_to_keep=None).restore(template, step, config)
