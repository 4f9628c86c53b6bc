"""Which parameters travel from the learner to the actors, and how the actor swaps them in.

Acting needs the policy and the encoder's trainable parts (per-camera heads, proprio head, and
the backbone only when it trains). A frozen backbone never changes, so it does not travel with
every update; an actor whose own frozen backbone differs (checked by digest at the handshake)
asks for it once.

Arrays travel flat, named by their path: "actor/Dense_0/kernel", "encoder/head_wrist_1/...".
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from agent.core import Agent

SEPARATOR = "/"


def flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts of arrays -> {"a/b/c": array}."""
    out: dict[str, np.ndarray] = {}
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{SEPARATOR}{key}" if prefix else str(key)))
    else:
        out[prefix] = np.asarray(tree)
    return out


def _unflatten_like(template: Any, arrays: Mapping[str, np.ndarray], prefix: str, used: set[str]) -> Any:
    if isinstance(template, Mapping):
        return {key: _unflatten_like(value, arrays, f"{prefix}{SEPARATOR}{key}" if prefix else str(key), used)
                for key, value in template.items()}
    if prefix not in arrays:
        raise KeyError(f"parameter '{prefix}' is missing")
    value = arrays[prefix]
    expected_shape, expected_dtype = tuple(np.shape(template)), np.dtype(template.dtype)
    if tuple(value.shape) != expected_shape or value.dtype != expected_dtype:
        raise ValueError(f"parameter '{prefix}' is {value.dtype}{tuple(value.shape)}, this agent has "
                         f"{expected_dtype}{expected_shape}")
    used.add(prefix)
    return value


def unflatten_like(template: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """The inverse of `flatten`, checked leaf by leaf against `template` (names, shapes, dtypes)."""
    used: set[str] = set()
    tree = _unflatten_like(template, arrays, "", used)
    extra = sorted(set(arrays) - used)
    if extra:
        raise ValueError(f"parameters {extra[:4]} are not part of this agent")
    return tree


def trainable_acting_params(agent: Agent) -> dict[str, Any]:
    """The parameters an actor needs beyond its frozen backbone."""
    params = {"actor": agent.actor.params, "encoder": agent.critic.params["encoder"]}
    if "backbone" in agent.critic.params:
        params["backbone"] = agent.critic.params["backbone"]
    return params


def export_acting_params(agent: Agent) -> dict[str, np.ndarray]:
    """Flat host copies of `trainable_acting_params` (what a PARAMS message carries)."""
    return flatten(jax.device_get(trainable_acting_params(agent)))


def all_finite(arrays: Mapping[str, np.ndarray]) -> bool:
    return all(np.all(np.isfinite(a)) for a in arrays.values() if a.dtype.kind == "f")


def acting_params_from_arrays(agent: Agent, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Received flat arrays as device arrays shaped like `agent`'s acting parameters.

    Raises ValueError/KeyError if they do not fit. This is the slow part of a swap (host to
    device copies), so the actor runs it on its transport thread, off the control loop."""
    tree = unflatten_like(jax.device_get(trainable_acting_params(agent)), arrays)
    return jax.tree.map(jnp.asarray, tree)


def with_acting_params(agent: Agent, tree: Mapping[str, Any]) -> Agent:
    """`agent` acting with parameters from `acting_params_from_arrays` (no copies: a pytree swap)."""
    critic_params = {**agent.critic.params, "encoder": tree["encoder"]}
    if "backbone" in tree:
        critic_params["backbone"] = tree["backbone"]
    return agent.replace(actor=agent.actor.replace(params=tree["actor"]),
                         critic=agent.critic.replace(params=critic_params))


def apply_acting_params(agent: Agent, arrays: Mapping[str, np.ndarray]) -> Agent:
    """`agent` acting with the received flat parameters."""
    return with_acting_params(agent, acting_params_from_arrays(agent, arrays))


def backbone_digest(agent: Agent) -> str:
    """A short fingerprint of the frozen backbone ("" when there is none)."""
    leaves = flatten(jax.device_get(agent.frozen_backbone))
    if not leaves:
        return ""
    digest = hashlib.sha256()
    for name in sorted(leaves):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(leaves[name]).tobytes())
    return digest.hexdigest()[:16]


def export_backbone(agent: Agent) -> dict[str, np.ndarray]:
    return flatten(jax.device_get(agent.frozen_backbone))


def apply_backbone(agent: Agent, arrays: Mapping[str, np.ndarray]) -> Agent:
    tree = unflatten_like(jax.device_get(agent.frozen_backbone), arrays)
    return agent.replace(frozen_backbone=jax.tree.map(jnp.asarray, tree))
