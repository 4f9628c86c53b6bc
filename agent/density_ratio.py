"""The density-ratio network of Off2On's balanced replay (Lee et al. 2021): w_psi(s, a) >= 0
estimates d_online(s, a) / d_offline(s, a), and its self-normalised, tempered value is the
sampling priority of a transition (agent/prioritized.py).

It is trained on the Jensen–Shannon variational lower bound,

    max_psi  E_online[f'(w)] - E_offline[f*(f'(w))],   f(y) = y log(2y / (y + 1)) + log(2 / (y + 1)),

whose maximiser over all functions is w = d_online / d_offline (the bound is tight at
f'(w) = f'(p / q)); at the optimum the objective is D_f(online || offline) = 2 JS(online, offline).

Inputs are flat float vectors: the caller concatenates what it wants the ratio to depend on
(encoder features and the action). `DensityRatio` is a pytree (parameters, Adam moments, step
are leaves; the network and the optimizer are static), so `update` is one jitted function per
architecture. docs/agent.md, "Balanced replay (Off2On) — building blocks", lists the defaults
and which of them are the reference's and which are choices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from agent.networks import MLP

Params = Any

LOG2 = float(jnp.log(2.0))
_TINY = 1e-12  # floor inside log(w): a ReLU output can be exactly 0

# Priority temperature T (priority = w^(1/T) / mean_offline w^(1/T)): 5.0 is the reference code's
# default (D4RL locomotion); 2.5 is this project's manipulation default (ALGORITHMS.md brief).
TEMPERATURE_MANIPULATION = 2.5
TEMPERATURE_LOCOMOTION = 5.0
# The reference clips the self-normalised priorities to this range before writing them.
REFERENCE_PRIORITY_BOUNDS = (1e-3, 1e3)


# --- the Jensen–Shannon f and its derivatives -------------------------------------------------
#
# f(y)  = y log(2y/(y+1)) + log(2/(y+1))                                     (y > 0)
# f'(y) = log(2y/(y+1)) + y [1/y - 1/(y+1)] - 1/(y+1)
#       = log(2y/(y+1)) + 1 - y/(y+1) - 1/(y+1) = log(2y/(y+1))            (< log 2)
# f*(t) = sup_y t y - f(y); the sup is where f'(y) = t, i.e. e^t = 2y/(y+1), y = e^t / (2 - e^t),
#         and there f*(t) = y f'(y) - f(y) = -log(2/(y+1)) = log((y+1)/2); with
#         (y+1)/2 = 1/(2 - e^t) this is f*(t) = -log(2 - e^t)               (t < log 2).
# So f*(f'(y)) = log((1+y)/2): the loss uses that closed form (no exp/log round trip).

def js_f(y: jax.Array) -> jax.Array:
    """The generator f(y) = y log(2y/(y+1)) + log(2/(y+1)) (D_f = 2 JS)."""
    return y * (LOG2 + jnp.log(y) - jnp.log1p(y)) + LOG2 - jnp.log1p(y)


def js_f_prime(y: jax.Array) -> jax.Array:
    """f'(y) = log(2y / (y + 1)), with y floored at 1e-12 (finite at a ReLU's 0)."""
    return LOG2 + jnp.log(jnp.maximum(y, _TINY)) - jnp.log1p(y)


def js_f_star(t: jax.Array) -> jax.Array:
    """The convex conjugate f*(t) = -log(2 - e^t), defined for t < log 2."""
    return -jnp.log(2.0 - jnp.exp(t))


def js_f_star_of_f_prime(y: jax.Array) -> jax.Array:
    """f*(f'(y)) = log((1 + y) / 2), in closed form."""
    return jnp.log1p(y) - LOG2


def js_loss(w_online: jax.Array, w_offline: jax.Array) -> jax.Array:
    """The negated bound: E_offline[f*(f'(w))] - E_online[f'(w)] (minimise it)."""
    return jnp.mean(js_f_star_of_f_prime(w_offline)) - jnp.mean(js_f_prime(w_online))


# --- the network -------------------------------------------------------------------------------

# Non-negative output: the reference applies ReLU to a linear output whose bias starts at 1.
# ReLU can die (w = 0 gives f'(w) -> -inf and no gradient), so softplus is the default here;
# "relu" reproduces the reference and "exp" is the other common choice.
OUTPUTS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "softplus": jax.nn.softplus,
    "relu": jax.nn.relu,
    "exp": jnp.exp,
}
# Output bias at which w = 1 at initialisation (the reference starts its ReLU output at bias 1):
# the first priorities are then ~1, the offline priority, instead of arbitrary.
_BIAS_FOR_ONE = {"softplus": float(jnp.log(jnp.e - 1.0)), "relu": 1.0, "exp": 0.0}


def _small_uniform(scale: float) -> Callable[..., jax.Array]:
    # The last layer starts near 0 (as the reference's U(-3e-3, 3e-3)) so w starts near 1 everywhere.
    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -scale, scale)
    return init


class DensityRatioNet(nn.Module):
    """x -> w(x) >= 0: an MLP (ReLU, no LayerNorm by default, as the reference) and one output."""

    hidden_dims: Sequence[int] = (256, 128)
    activation: str = "relu"
    layer_norm: bool = False
    output: str = "softplus"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = MLP(tuple(self.hidden_dims), self.activation, self.layer_norm, name="mlp")(x)
        raw = nn.Dense(1, kernel_init=_small_uniform(3e-3),
                       bias_init=nn.initializers.constant(_BIAS_FOR_ONE[self.output]), name="out")(x)
        return OUTPUTS[self.output](raw[..., 0])


@struct.dataclass
class DensityRatio:
    params: Params
    opt_state: optax.OptState
    step: jax.Array
    net: DensityRatioNet = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)


@functools.lru_cache(maxsize=16)
def _adam(learning_rate: float) -> optax.GradientTransformation:
    # One optimizer object per learning rate: states built alike share update's jit cache.
    return optax.adam(learning_rate)


def create_density_ratio(key: jax.Array, input_dim: int, hidden: Sequence[int] = (256, 128), lr: float = 3e-4,
                         *, activation: str = "relu", layer_norm: bool = False,
                         output: str = "softplus") -> DensityRatio:
    """A fresh w_psi for inputs of `input_dim` floats, with Adam(lr) (3e-4, as the reference)."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {sorted(OUTPUTS)}, got {output!r}")
    net = DensityRatioNet(tuple(int(h) for h in hidden), activation, layer_norm, output)
    params = net.init(key, jnp.zeros((1, int(input_dim)), jnp.float32))["params"]
    tx = _adam(float(lr))
    return DensityRatio(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32), net=net, tx=tx)


@jax.jit
def update(state: DensityRatio, online_inputs: jax.Array,
           offline_inputs: jax.Array) -> tuple[DensityRatio, dict[str, jax.Array]]:
    """One Adam step on the JS bound from a batch of online and one of offline inputs (the
    reference: 256 each, drawn uniformly from each buffer, not by priority)."""
    online_inputs = jnp.asarray(online_inputs, jnp.float32)
    offline_inputs = jnp.asarray(offline_inputs, jnp.float32)
    n_on = online_inputs.shape[0]

    def loss_fn(params: Params) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        # One forward pass over both batches (one matmul per layer instead of two).
        w = state.net.apply({"params": params}, jnp.concatenate([online_inputs, offline_inputs]))
        w_on, w_off = w[:n_on], w[n_on:]
        return js_loss(w_on, w_off), (w_on, w_off)

    (loss, (w_on, w_off)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    state = state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state,
                          step=state.step + 1)
    metrics = {
        "density_ratio/loss": loss,
        # -loss estimates 2 JS(online, offline), in [0, 2 log 2]: 0 = indistinguishable.
        "density_ratio/js_bound": -loss,
        "density_ratio/w_online_mean": jnp.mean(w_on),
        "density_ratio/w_offline_mean": jnp.mean(w_off),
    }
    return state, metrics


@jax.jit
def ratios(state: DensityRatio, inputs: jax.Array) -> jax.Array:
    """w_psi(inputs) >= 0, one per row."""
    return state.net.apply({"params": state.params}, jnp.asarray(inputs, jnp.float32))


def self_normalised_priorities(w: jax.Array, offline_w: jax.Array, temperature: float = TEMPERATURE_MANIPULATION,
                               bounds: tuple[float, float] | None = REFERENCE_PRIORITY_BOUNDS) -> jax.Array:
    """Priorities w^(1/T) / mean_offline(w^(1/T)), clipped to `bounds` (None: not clipped).

    The denominator is over `offline_w` (the reference: the offline batch of the same step), so an
    offline sample at the offline mean gets priority 1, the priority offline samples start at.
    T > 1 flattens the ratios (a wrong w ranks less sharply). Works on numpy or jax arrays.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    tempered = jnp.asarray(w, jnp.float32) ** (1.0 / temperature)
    scale = jnp.mean(jnp.asarray(offline_w, jnp.float32) ** (1.0 / temperature))
    priorities = tempered / jnp.maximum(scale, _TINY)
    if bounds is not None:
        priorities = jnp.clip(priorities, bounds[0], bounds[1])
    return priorities
