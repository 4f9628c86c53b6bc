"""MLPs, the critic ensemble and the tanh-Gaussian policy (Flax linen).

Every hidden layer is Dense -> LayerNorm -> activation (ALGORITHMS.md, "SAC core"). The critic
ensemble is one module vmapped over its parameters, so E members cost one batched matmul.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": nn.tanh,
    "relu": nn.relu,
    "gelu": nn.gelu,
    "swish": nn.swish,
    "elu": nn.elu,
}

default_init = nn.initializers.xavier_uniform


class MLP(nn.Module):
    """Dense -> (LayerNorm) -> activation per hidden layer."""

    hidden_dims: Sequence[int]
    activation: str = "tanh"
    layer_norm: bool = True
    activate_final: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for i, size in enumerate(self.hidden_dims):
            x = nn.Dense(size, kernel_init=default_init())(x)
            if i + 1 < len(self.hidden_dims) or self.activate_final:
                if self.layer_norm:
                    x = nn.LayerNorm()(x)
                x = act(x)
        return x


class ResidualMLP(nn.Module):
    """Input Dense(width); blocks x + Dense(width)(act(Dense(block_width)(LN(x)))); act -> Dense(width).

    The residual critic of the published robot runs (width 256, block width 1024, 2 blocks).
    """

    width: int = 256
    block_width: int = 1024
    num_blocks: int = 2
    activation: str = "tanh"
    layer_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        x = nn.Dense(self.width, kernel_init=default_init())(x)
        for _ in range(self.num_blocks):
            y = nn.LayerNorm()(x) if self.layer_norm else x
            y = nn.Dense(self.block_width, kernel_init=default_init())(y)
            y = act(y)
            y = nn.Dense(self.width, kernel_init=default_init())(y)
            x = x + y
        x = act(x)
        return nn.Dense(self.width, kernel_init=default_init())(x)


class Trunk(nn.Module):
    """An MLP or residual MLP chosen by `arch`."""

    arch: str = "mlp"
    hidden_dims: Sequence[int] = (256, 256)
    residual_width: int = 256
    residual_block_width: int = 1024
    residual_blocks: int = 2
    activation: str = "tanh"
    layer_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.arch == "residual":
            return ResidualMLP(
                self.residual_width, self.residual_block_width, self.residual_blocks,
                self.activation, self.layer_norm, name="residual",
            )(x)
        return MLP(tuple(self.hidden_dims), self.activation, self.layer_norm, name="mlp")(x)


class QNetwork(nn.Module):
    """Q(features, action) -> scalar."""

    trunk: Trunk

    @nn.compact
    def __call__(self, features: jax.Array, actions: jax.Array) -> jax.Array:
        x = jnp.concatenate([features, actions], axis=-1)
        x = self.trunk(x)
        return nn.Dense(1, kernel_init=default_init())(x)[..., 0]


class ValueNetwork(nn.Module):
    """V(features) -> scalar: IQL's state value, the critic's trunk without the action input."""

    trunk: Trunk

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        return nn.Dense(1, kernel_init=default_init())(self.trunk(features))[..., 0]


class QEnsemble(nn.Module):
    """E independent Q-networks, vmapped: params carry a leading axis E; output (E, ...)."""

    trunk: Trunk
    num: int = 10

    @nn.compact
    def __call__(self, features: jax.Array, actions: jax.Array) -> jax.Array:
        ensemble = nn.vmap(
            QNetwork,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num,
        )
        return ensemble(self.trunk, name="members")(features, actions)


class TanhGaussianPolicy(nn.Module):
    """Diagonal Gaussian with state-dependent log-std, squashed by tanh.

    Returns (mean, log_std) of the pre-tanh Gaussian, with std clipped to [std_min, std_max].
    """

    trunk: Trunk
    action_dim: int
    std_min: float = 1e-5
    std_max: float = 5.0

    @nn.compact
    def __call__(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = self.trunk(features)
        mean = nn.Dense(self.action_dim, kernel_init=default_init(), name="mean")(x)
        raw = nn.Dense(self.action_dim, kernel_init=default_init(), name="log_std")(x)
        # std = clip(exp(raw), std_min, std_max), as SERL: starts near std 1, good for exploration.
        log_std = jnp.clip(raw, jnp.log(self.std_min), jnp.log(self.std_max))
        return mean, log_std


_HALF_LOG_2PI = 0.5 * jnp.log(2.0 * jnp.pi)


def _log_one_minus_tanh_sq(u: jax.Array) -> jax.Array:
    # log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)), stable for large |u|.
    return 2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u))


def tanh_gaussian_sample(
    key: jax.Array, mean: jax.Array, log_std: jax.Array, sample_shape: tuple[int, ...] = ()
) -> tuple[jax.Array, jax.Array]:
    """Reparameterised sample a = tanh(mean + std * eps) and its log-probability (summed over d).

    `sample_shape` is prepended: samples have shape sample_shape + mean.shape.
    """
    eps = jax.random.normal(key, sample_shape + mean.shape, mean.dtype)
    u = mean + jnp.exp(log_std) * eps
    gauss = -0.5 * eps**2 - log_std - _HALF_LOG_2PI
    log_prob = jnp.sum(gauss - _log_one_minus_tanh_sq(u), axis=-1)
    return jnp.tanh(u), log_prob


def tanh_gaussian_log_prob(mean: jax.Array, log_std: jax.Array, actions: jax.Array) -> jax.Array:
    """log pi(a) of given squashed actions (clipped slightly inside (-1, 1))."""
    a = jnp.clip(actions, -1.0 + 1e-6, 1.0 - 1e-6)
    u = jnp.arctanh(a)
    z = (u - mean) / jnp.exp(log_std)
    gauss = -0.5 * z**2 - log_std - _HALF_LOG_2PI
    return jnp.sum(gauss - _log_one_minus_tanh_sq(u), axis=-1)
