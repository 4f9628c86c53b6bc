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
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from agent.config import AgentConfig
from agent.core import Agent
from robot_env.errors import UserError

_log = logging.getLogger(__name__)

_ARCHITECTURE_SECTIONS = ("network", "encoder")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read (missing, corrupt)."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose parameters do not fit the agent being restored."""




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
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, agent: Agent, config: AgentConfig | None = None, extra: dict | None = None) -> Path:
        """Write `agent` as step `step` (blocking; atomic). Returns the step's directory."""
        meta = {
            "agent_config": dataclasses.asdict(config) if config is not None else None,
            "architecture": architecture_summary(agent),
            "extra": extra or {},
        }
        self._manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(_drop_empty(state_dict(agent))),
                                    meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self._manager.wait_until_finished()
        return self.directory / str(step)

    def read_meta(self, step: int | None = None) -> dict:
        step = self._resolve(step)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as exc:  # orbax raises several types for unreadable files
            raise CheckpointError(f"cannot read checkpoint {self.directory}/{step}: {exc}") from None
        return restored["meta"]

    def restore(self, template: Agent, step: int | None = None, config: AgentConfig | None = None) -> tuple[Agent, dict]:
        """Restore step `step` (default: latest) into an agent shaped like `template`.

        Returns (agent, extra). Raises CheckpointMismatchError when the shapes differ.
        """
        step = self._resolve(step)
        meta = self.read_meta(step)
        expected = {p: _shape_of(leaf) for p, leaf in _flatten(_drop_empty(state_dict(template))).items()}
        found = {p: (tuple(shape), "") for p, shape in meta.get("architecture", {}).items()}
        problems = compare_architecture(expected, found)
        if problems:
            raise CheckpointMismatchError(self._mismatch_message(step, problems, meta, config))
        target = _drop_empty(state_dict(template))
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), target)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        except Exception as exc:
            raise CheckpointError(
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
