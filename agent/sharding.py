"""Data-parallel learner steps over the local devices with `jax.sharding`.

`learner.devices` / `pretrain.devices` say how many local devices of the backend JAX runs on
(agent/devices.py chooses it) share every learner step: 0 = all of them (the default), N = the
first N. The batch is split along its batch axis, one equal slice per device; the agent (params,
optimizer state, targets, RNG) is replicated. The step is the same compiled function as on one
device (`agent.sac._learner_step`): jit partitions it from the input shardings and inserts the
cross-device reductions (the batch means of the losses and gradients), so every device ends the
step with the same, replicated agent — the update one device would compute, to float rounding.

With one device this is the plain `agent.sac.learner_step`: nothing is placed or resharded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from agent.core import Agent
from agent.sac import _learner_step, learner_step
from robot_env.errors import ConfigError

BATCH_AXIS = "batch"

LearnerStep = Callable[[Agent, dict], tuple[Agent, dict]]


class ShardingError(ConfigError):
    """A device count or batch size that cannot be split as asked; the message names the key."""


def local_devices(count: int, key: str) -> list[jax.Device]:
    """The first `count` local devices of JAX's backend (0: all). `key` names the config value."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ShardingError(f"{key} must be an integer >= 0 (0 = all local devices), got {count!r}")
    devices = jax.local_devices()
    if count > len(devices):
        raise ShardingError(f"{key}={count} but JAX sees {len(devices)} local {jax.default_backend()} device(s); "
                            f"set {key}=0 to use all of them")
    return devices[:count] if count else devices


class DataParallelStep:
    """`learner_step` with its batches split over `devices` and the agent replicated on them.

    Batches are stacked UTD groups (utd, batch, ...), so the split is along axis 1."""

    def __init__(self, devices: list[jax.Device], step: Callable[[Agent, dict], tuple[Agent, dict]] = _learner_step):
        self.devices = list(devices)
        mesh = Mesh(self.devices, (BATCH_AXIS,))
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.split = NamedSharding(mesh, PartitionSpec(None, BATCH_AXIS))
        self._step = jax.jit(step, out_shardings=(self.replicated, self.replicated))

    def place_batches(self, batches: dict) -> dict:
        """Host (or single-device) batches -> one slice of the batch axis on each device."""
        return jax.device_put(batches, self.split)

    def place_agent(self, agent: Agent) -> Agent:
        """The agent on every device (a no-op once it is: the step's output stays replicated)."""
        return jax.device_put(agent, self.replicated)

    def __call__(self, agent: Agent, batches: dict) -> tuple[Agent, dict]:
        return self._step(self.place_agent(agent), self.place_batches(batches))


def data_parallel_step(devices: int, batch_size: int, key: str, *, step: LearnerStep = _learner_step,
                       jitted: LearnerStep = learner_step) -> tuple[LearnerStep, str]:
    """The learner step for `devices` (the value of config key `key`) and a line saying how it
    runs. A batch size that does not split evenly over the devices is a ShardingError. `step`
    (un-jitted) and `jitted` (its one-device compiled form) default to SAC's; IQL pre-training
    passes `agent.iql._iql_learner_step` and `iql_learner_step`."""
    chosen = local_devices(devices, key)
    count = len(chosen)
    if batch_size % count:
        raise ShardingError(f"agent.sac.batch_size={batch_size} does not split evenly over {count} devices "
                            f"({key}={devices}); set agent.sac.batch_size to a multiple of {count} or {key} "
                            "to a count that divides it")
    if count == 1:
        return jitted, f"learner step on 1 device ({chosen[0].platform})"
    return DataParallelStep(chosen, step), (f"learner step data-parallel on {count} {chosen[0].platform} devices: "
                                      f"{batch_size // count} samples of each batch per device, agent replicated")


def place_batches(step: LearnerStep, batches: dict) -> dict:
    """`batches` where `step` will read them: split over its devices for a DataParallelStep, on
    the default device otherwise. Placing ahead of the step lets the copy overlap computation."""
    if isinstance(step, DataParallelStep):
        return step.place_batches(batches)
    return jax.device_put(batches)


def is_replicated(tree: Any, devices: int) -> bool:
    """Whether every array of `tree` lives, whole, on `devices` devices (a check for tests and logs)."""
    return all(len(x.sharding.device_set) == devices and x.sharding.is_fully_replicated
               for x in jax.tree.leaves(tree) if isinstance(x, jax.Array))


__all__ = ["DataParallelStep", "ShardingError", "data_parallel_step", "is_replicated", "local_devices", "place_batches"]
