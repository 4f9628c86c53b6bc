"""Image backbones (ResNet-10/18/34), per-camera heads, the observation encoder, augmentation.

Backbone output is the pre-pooling feature map (B, h, w, 512); at 128x128 input it is 4x4x512.
Two flavours share one module:
- ResNet-10 as SERL builds it: GroupNorm (4 groups), "SAME" padding for the 3x3 convs and the
  max pool (the stem pads 3 px on each side), so SERL's pretrained parameters reproduce SERL's
  features;
- ResNet-18/34 as torchvision builds them: symmetric padding like PyTorch, and batch norm in
  evaluation form, folded into a per-channel affine (scale, bias) when weights are imported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

STAGE_SIZES = {"resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


class Affine(nn.Module):
    """Per-channel scale and bias: batch norm in evaluation form (statistics folded in)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        return x * scale + bias


def _norm(kind: str, name: str) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(num_groups=4, epsilon=1e-5, name=name)
    return Affine(name=name)


def _pad(style: str, kernel: int, stride: int):
    # torch pads (k - 1) // 2 on both sides; "SAME" pads asymmetrically on strided convs.
    if style == "torch" or kernel == 7:
        p = (kernel - 1) // 2
        return ((p, p), (p, p))
    return "SAME"


class BasicBlock(nn.Module):
    filters: int
    strides: int
    norm: str
    padding: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv_init = nn.initializers.kaiming_normal()
        y = nn.Conv(self.filters, (3, 3), (self.strides, self.strides), padding=_pad(self.padding, 3, self.strides),
                    use_bias=False, kernel_init=conv_init, name="conv1")(x)
        y = nn.relu(_norm(self.norm, "norm1")(y))
        y = nn.Conv(self.filters, (3, 3), padding=_pad(self.padding, 3, 1), use_bias=False,
                    kernel_init=conv_init, name="conv2")(y)
        y = _norm(self.norm, "norm2")(y)
        if x.shape[-1] != self.filters or self.strides != 1:
            x = nn.Conv(self.filters, (1, 1), (self.strides, self.strides), padding="VALID", use_bias=False,
                        kernel_init=conv_init, name="proj_conv")(x)
            x = _norm(self.norm, "proj_norm")(x)
        return nn.relu(x + y)


class ResNetBackbone(nn.Module):
    """uint8 (..., H, W, 3) images -> float32 (..., h, w, 512) pre-pooling features."""

    stage_sizes: Sequence[int] = (1, 1, 1, 1)
    norm: str = "group"  # "group" (SERL ResNet-10) or "affine" (torchvision, batch norm folded)
    padding: str = "same"  # "same" (SERL) or "torch"
    width: int = 64

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        lead = images.shape[:-3]
        x = images.reshape((-1,) + images.shape[-3:]).astype(jnp.float32) / 255.0
        x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
        x = nn.Conv(self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                    kernel_init=nn.initializers.kaiming_normal(), name="stem_conv")(x)
        x = nn.relu(_norm(self.norm, "stem_norm")(x))
        pool_pad = ((1, 1), (1, 1)) if self.padding == "torch" else "SAME"
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=pool_pad)
        for stage, blocks in enumerate(self.stage_sizes):
            for block in range(blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(self.width * 2**stage, strides, self.norm, self.padding,
                               name=f"stage{stage}_block{block}")(x)
        return x.reshape(lead + x.shape[1:])


def make_backbone(name: str) -> ResNetBackbone:
    if name not in STAGE_SIZES:
        raise ValueError(f"unknown backbone '{name}'; choose one of {sorted(STAGE_SIZES)}")
    if name == "resnet10":
        return ResNetBackbone(STAGE_SIZES[name], norm="group", padding="same")
    return ResNetBackbone(STAGE_SIZES[name], norm="affine", padding="torch")


class SpatialLearnedEmbeddings(nn.Module):
    """(B, h, w, c) -> (B, c * num_features): each channel's map dotted with learned spatial kernels."""

    num_features: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h, w, c = x.shape[-3:]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (h, w, c, self.num_features))
        y = jnp.einsum("...hwc,hwcf->...cf", x, kernel)
        return y.reshape(y.shape[:-2] + (c * self.num_features,))


class _Kernels(nn.Module):
    """Parameters only: a kernel (and a bias) under the names `nn.Dense` and
    `SpatialLearnedEmbeddings` give them, so `ImageHead` can apply them in either order while its
    parameter tree, initial values and checkpoints stay those of the plain layers."""

    kernel_shape: tuple[int, ...]
    bias_size: int = 0

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array | None]:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), self.kernel_shape)
        bias = self.param("bias", nn.initializers.zeros, (self.bias_size,)) if self.bias_size else None
        return kernel, bias


DROPOUT_RESOLUTION = 1 << 16  # a keep decision per 16-bit uniform


def dropout_keep_mask(key: jax.Array, shape: tuple[int, ...], rate: float) -> tuple[jax.Array, float]:
    """(keep mask, keep probability) for dropout at `rate`: an element is kept when a 16-bit
    uniform is at least `round(rate * 2**16)`.

    Two 16-bit uniforms come from each 32-bit word of the key's generator, in one draw for the
    whole mask. `jax.random.bernoulli` spends a threefry evaluation on every element: on a 2-core
    CPU a 256 x 4096 mask alone takes about 10 ms that way and about 3 ms this way, and a train-gym
    image update went from 105 to 93 ms (`benchmarks/dropout_mask.py`). The rate is honoured to
    2**-16 (0.1 keeps 58982/65536), and the returned keep probability is the exact one, so scaling
    by it keeps the expectation exact.
    """
    threshold = round(rate * DROPOUT_RESOLUTION)
    width = shape[-1] if shape else 1
    words = jax.random.bits(key, (*shape[:-1], (width + 1) // 2), jnp.uint32)
    uniforms = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(*shape[:-1], -1)[..., :width]
    return uniforms.reshape(shape) >= threshold, 1.0 - threshold / DROPOUT_RESOLUTION


def dropout(key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
    """`x` with each element zeroed at `rate` and the rest scaled by 1 / the exact keep probability."""
    keep, keep_prob = dropout_keep_mask(key, x.shape, rate)
    return jnp.where(keep, x / keep_prob, 0.0)


class ImageHead(nn.Module):
    """Spatial learned embeddings -> dropout -> Dense -> LayerNorm -> tanh.

    Without active dropout the embeddings and the Dense layer are one linear map (h*w*c -> out),
    and it is applied in whichever order costs fewer multiply-adds for this batch: through the
    c * num_features embedding (the layers one after the other) or through their product (one
    matmul of h*w*c -> out per sample, and one batch-independent product of the two kernels). For
    feature maps of fewer than `num_features` positions (64x64 frames give 2x2, 32x32 give 1x1)
    the product is several times cheaper; it is the same function up to float rounding. Dropout
    masks each sample's embedding (`dropout_keep_mask`), so a training pass with dropout takes
    the layer order.
    """

    num_features: int = 8
    dropout: float = 0.1
    out_dim: int = 256

    @nn.compact
    def __call__(self, feature_map: jax.Array, train: bool) -> jax.Array:
        lead, (h, w, c) = feature_map.shape[:-3], feature_map.shape[-3:]
        f, o = self.num_features, self.out_dim
        spatial, _ = _Kernels((h, w, c, f), name="SpatialLearnedEmbeddings_0")()
        dense, bias = _Kernels((c * f, o), o, name="Dense_0")()
        batch = math.prod(lead)
        layered_cost = batch * (h * w * c * f + c * f * o)
        product_cost = batch * h * w * c * o + h * w * c * f * o
        if (train and self.dropout > 0) or layered_cost <= product_cost:
            x = jnp.einsum("...hwc,hwcf->...cf", feature_map, spatial).reshape(lead + (c * f,))
            if train and self.dropout > 0:
                x = dropout(self.make_rng("dropout"), x, self.dropout)
            x = x @ dense + bias
        else:
            product = jnp.einsum("hwcf,cfo->hwco", spatial, dense.reshape(c, f, o)).reshape(h * w * c, o)
            x = feature_map.reshape(lead + (h * w * c,)) @ product + bias
        return nn.tanh(nn.LayerNorm()(x))


class ObservationEncoder(nn.Module):
    """One head per camera on backbone feature maps, a proprio head on the state; concatenated."""

    image_keys: tuple[str, ...] = ()
    num_features: int = 8
    dropout: float = 0.1
    image_dim: int = 256
    proprio_dim: int = 64

    @nn.compact
    def __call__(self, feature_maps: dict[str, jax.Array], state: jax.Array | None, train: bool) -> jax.Array:
        parts = []
        for key in self.image_keys:
            parts.append(ImageHead(self.num_features, self.dropout, self.image_dim, name=f"head_{key}")(
                feature_maps[key], train))
        if state is not None:
            if self.proprio_dim > 0:
                s = nn.Dense(self.proprio_dim, name="proprio_dense")(state)
                state = nn.tanh(nn.LayerNorm(name="proprio_norm")(s))
            parts.append(state)
        return jnp.concatenate(parts, axis=-1)


def random_shift(key: jax.Array, images: jax.Array, pad: int) -> jax.Array:
    """Pad (edge) each image by `pad` px and crop back at a random offset, per image. (B, H, W, C)."""
    if pad <= 0:
        return images
    b, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    offsets = jax.random.randint(key, (b, 2), 0, 2 * pad + 1)

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

    return jax.vmap(crop)(padded, offsets)
