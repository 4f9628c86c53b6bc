"""The classifier's networks and pure functions: backbone features, head logits, probabilities.

The backbone is frozen, so it is applied once per frame (the feature cache) and the head is all
that trains. At deployment `make_probability_fn` jits backbone + head for one observation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from agent.vision import SpatialLearnedEmbeddings, make_backbone
from reward_classifier.config import POOLINGS


class SuccessHead(nn.Module):
    """Per-camera feature maps (B, h, w, c) -> one success logit per frame (B,).

    Each camera gets its own pooling parameters; the pooled vectors are concatenated and go through
    Dense -> dropout -> LayerNorm -> ReLU -> Dense 1."""

    image_keys: tuple[str, ...]
    pooling: str = "spatial"
    spatial_features: int = 8
    hidden_dim: int = 256
    dropout: float = 0.1

    @nn.compact
    def __call__(self, feature_maps: Mapping[str, jax.Array], train: bool) -> jax.Array:
        pooled = []
        for key in self.image_keys:
            x = feature_maps[key]
            if self.pooling == "spatial":
                x = SpatialLearnedEmbeddings(self.spatial_features, name=f"pool_{key}")(x)
            elif self.pooling == "mean":
                x = x.mean(axis=(-3, -2))
            else:
                x = x.reshape(x.shape[:-3] + (-1,))
            pooled.append(x)
        x = jnp.concatenate(pooled, axis=-1)
        x = nn.Dense(self.hidden_dim, name="hidden")(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.relu(nn.LayerNorm(name="norm")(x))
        return nn.Dense(1, name="logit")(x)[..., 0]


def make_head(image_keys: Sequence[str], pooling: str, spatial_features: int, hidden_dim: int,
              dropout: float) -> SuccessHead:
    if pooling not in POOLINGS:
        raise ValueError(f"classifier.pooling must be one of {POOLINGS}, got '{pooling}'")
    return SuccessHead(tuple(image_keys), pooling, spatial_features, hidden_dim, dropout)


def init_backbone(backbone: str, image_shape: tuple[int, int], key: jax.Array) -> dict:
    dummy = jnp.zeros((1, *image_shape, 3), jnp.uint8)
    return make_backbone(backbone).init(key, dummy)["params"]


def init_head(head: SuccessHead, feature_shape: tuple[int, ...], key: jax.Array) -> dict:
    dummy = {k: jnp.zeros((1, *feature_shape), jnp.float32) for k in head.image_keys}
    return head.init(key, dummy, train=False)["params"]


def make_feature_fn(backbone: str) -> Callable[[dict, jax.Array], jax.Array]:
    """jitted (backbone_params, uint8 frames (B, H, W, 3)) -> float32 feature maps (B, h, w, c)."""
    net = make_backbone(backbone)
    return jax.jit(lambda params, frames: net.apply({"params": params}, frames))


def compute_features(feature_fn, backbone_params: dict, frames: np.ndarray, batch_size: int,
                     progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Feature maps of uint8 frames (N, H, W, 3), in batches; the last batch is padded to the batch
    size so the backbone compiles once."""
    out = []
    for start in range(0, len(frames), batch_size):
        chunk = frames[start:start + batch_size]
        padded = chunk
        if len(chunk) < batch_size:
            padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk),) + chunk.shape[1:], chunk.dtype)])
        out.append(np.asarray(feature_fn(backbone_params, padded))[:len(chunk)])
        if progress is not None:
            progress(len(chunk))
    return np.concatenate(out)


def make_probability_fn(backbone: str, head: SuccessHead) -> Callable[[dict, dict, dict], jax.Array]:
    """jitted (backbone_params, head_params, {camera: uint8 (B, H, W, 3)}) -> success probability (B,).

    The cameras share one backbone call (stacked along the batch), which is faster at batch 1
    than one call per camera."""
    net = make_backbone(backbone)
    keys = head.image_keys

    def probability(backbone_params, head_params, images):
        frames = jnp.concatenate([jnp.asarray(images[k], jnp.uint8) for k in keys], axis=0)
        maps = net.apply({"params": backbone_params}, frames)
        per_camera = dict(zip(keys, jnp.split(maps, len(keys), axis=0), strict=True))
        return jax.nn.sigmoid(head.apply({"params": head_params}, per_camera, train=False))

    return jax.jit(probability)
