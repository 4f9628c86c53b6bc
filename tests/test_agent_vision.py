"""Image encoders: the frozen-backbone feature cache equals re-encoding; augmentation; shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agent.config import AgentConfig, AgentConfigError
from agent.core import agent_encode_frames, create_agent, encode_frames, uses_feature_cache
from agent.sac import critic_loss_and_grads
from agent.vision import (
    DROPOUT_RESOLUTION,
    ImageHead,
    dropout,
    dropout_keep_mask,
    make_backbone,
    random_shift,
)

B, H = 4, 32


def _cfg(**encoder):
    cfg = AgentConfig()
    cfg.network.critic_hidden_dims = [32, 32]
    cfg.network.actor_hidden_dims = [32, 32]
    cfg.network.num_critics = 2
    cfg.encoder.image_head_dim = 32
    cfg.encoder.proprio_dim = 16
    cfg.cql.enabled = True
    cfg.cql.n_actions = 2
    for key, value in encoder.items():
        setattr(cfg.encoder, key, value)
    return cfg


def _example():
    return {"state": np.zeros(5, np.float32), "wrist_1": np.zeros((H, H, 3), np.uint8),
            "wrist_2": np.zeros((H, H, 3), np.uint8)}


def _batch(rng):
    def obs():
        return {"state": rng.normal(size=(B, 5)).astype(np.float32),
                "wrist_1": rng.integers(0, 256, (B, H, H, 3), dtype=np.uint8),
                "wrist_2": rng.integers(0, 256, (B, H, H, 3), dtype=np.uint8)}
    return {"observations": obs(), "next_observations": obs(),
            "actions": rng.uniform(-1, 1, (B, 3)).astype(np.float32), "rewards": np.zeros(B, np.float32),
            "masks": np.ones(B, np.float32), "mc_returns": rng.normal(size=B).astype(np.float32)}


def test_feature_cache_gives_the_same_loss_and_gradients():
    agent = create_agent(_cfg(), _example(), 3)
    assert uses_feature_cache(agent)
    batch = _batch(np.random.default_rng(0))
    cached = dict(batch)
    for field in ("observations", "next_observations"):
        obs = dict(batch[field])
        for cam in ("wrist_1", "wrist_2"):
            # What the buffer stores per frame: the public jitted encoder on the agent's frozen params.
            obs[cam] = np.asarray(encode_frames(agent.frozen_backbone, obs[cam], backbone="resnet10"))
            np.testing.assert_allclose(obs[cam], agent_encode_frames(agent, batch[field][cam]), rtol=1e-6)
        cached[field] = obs
    assert cached["observations"]["wrist_1"].shape == (B, 1, 1, 512)

    loss_raw, grads_raw, m_raw = critic_loss_and_grads(agent, batch)
    loss_cached, grads_cached, m_cached = critic_loss_and_grads(agent, cached)
    assert float(loss_cached) == pytest.approx(float(loss_raw), rel=1e-5)
    assert float(m_cached["calql_bound_rate"]) == pytest.approx(float(m_raw["calql_bound_rate"]))
    flat_raw = jax.tree_util.tree_flatten_with_path(grads_raw)[0]
    flat_cached = jax.tree.leaves(grads_cached)
    for (path, g_raw), g_cached in zip(flat_raw, flat_cached, strict=True):
        np.testing.assert_allclose(g_cached, g_raw, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    # The image heads do get gradients (the critic trains them).
    head = grads_raw["encoder"]["head_wrist_1"]
    assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(head))


def test_float16_cached_features_give_the_float32_loss_and_gradients_to_half_precision():
    """The replay buffer stores cached features as float16 (agent/data/replay_buffer.py); the
    update from them is the float32 one to float16's rounding of the inputs."""
    agent = create_agent(_cfg(), _example(), 3)
    batch = _batch(np.random.default_rng(1))
    cached = {dtype: dict(batch) for dtype in (np.float32, np.float16)}
    for field in ("observations", "next_observations"):
        maps = {cam: np.asarray(agent_encode_frames(agent, batch[field][cam])) for cam in ("wrist_1", "wrist_2")}
        for dtype in cached:
            cached[dtype][field] = {**batch[field], **{cam: m.astype(dtype) for cam, m in maps.items()}}
    assert cached[np.float16]["observations"]["wrist_1"].dtype == np.float16
    loss32, grads32, _ = critic_loss_and_grads(agent, cached[np.float32])
    loss16, grads16, _ = critic_loss_and_grads(agent, cached[np.float16])
    assert float(loss16) == pytest.approx(float(loss32), rel=5e-3)
    for g32, g16 in zip(jax.tree.leaves(grads32), jax.tree.leaves(grads16), strict=True):
        scale = float(np.abs(np.asarray(g32)).max()) + 1e-6
        assert float(np.abs(np.asarray(g16) - np.asarray(g32)).max()) <= 2e-2 * scale


def test_trainable_backbone_with_augmentation_trains_the_backbone():
    cfg = _cfg(freeze_backbone=False, augment=True)
    cfg.cql.enabled = False
    agent = create_agent(cfg, _example(), 3)
    assert not uses_feature_cache(agent)
    assert agent.frozen_backbone == {}
    batch = _batch(np.random.default_rng(1))
    _, grads, _ = critic_loss_and_grads(agent, batch)
    assert np.abs(np.asarray(grads["backbone"]["stem_conv"]["kernel"])).max() > 0
    # Cached features cannot be augmented or trained through.
    cached = dict(batch)
    cached["observations"] = dict(batch["observations"], wrist_1=np.zeros((B, 1, 1, 512), np.float32))
    with pytest.raises(AgentConfigError, match="wrist_1"):
        critic_loss_and_grads(agent, cached)


def test_random_shift_is_an_edge_padded_crop():
    images = jnp.arange(2 * 8 * 8 * 1, dtype=jnp.uint8).reshape(2, 8, 8, 1)
    shifted = np.asarray(random_shift(jax.random.PRNGKey(0), images, 4))
    assert shifted.shape == images.shape and shifted.dtype == np.uint8
    padded = np.pad(np.asarray(images), ((0, 0), (4, 4), (4, 4), (0, 0)), mode="edge")
    for i in range(2):
        windows = [padded[i, y:y + 8, x:x + 8] for y in range(9) for x in range(9)]
        assert any(np.array_equal(shifted[i], w) for w in windows)
    assert np.array_equal(random_shift(jax.random.PRNGKey(0), images, 0), images)


def test_resnet10_at_128_gives_4x4x512():
    backbone = make_backbone("resnet10")
    shape = jax.eval_shape(lambda: backbone.init_with_output(jax.random.PRNGKey(0), jnp.zeros((1, 128, 128, 3), jnp.uint8))[0])
    assert shape.shape == (1, 4, 4, 512)


def test_state_only_and_unknown_keys():
    cfg = _cfg()
    agent = create_agent(cfg, {"state": np.zeros(4, np.float32)}, 2)
    assert agent.nets.backbone is None and not uses_feature_cache(agent)
    with pytest.raises(AgentConfigError, match="wrist_3"):
        create_agent(cfg, {"state": np.zeros(4, np.float32), "wrist_3": np.zeros((8, 8, 3), np.uint8)}, 2)


def _layered_head(params, maps, train_mask=None):
    """The image head as its layers define it: embeddings, (dropout), Dense, LayerNorm, tanh."""
    h, w, c = maps.shape[-3:]
    kernel = params["SpatialLearnedEmbeddings_0"]["kernel"]
    x = jnp.einsum("bhwc,hwcf->bcf", maps, kernel).reshape(maps.shape[0], -1)
    x = x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    x = (x - mean) / jnp.sqrt(var + 1e-6) * params["LayerNorm_0"]["scale"] + params["LayerNorm_0"]["bias"]
    return jnp.tanh(x)


@pytest.mark.parametrize("side", [1, 2, 4])
def test_image_head_is_its_layers_whichever_order_it_multiplies_in(side):
    head = ImageHead(num_features=8, dropout=0.1, out_dim=32)
    maps = jax.random.normal(jax.random.PRNGKey(1), (64, side, side, 64))
    params = head.init(jax.random.PRNGKey(0), maps, False)["params"]
    # The parameter tree of the plain layers: checkpoints and pretrained heads load unchanged.
    assert {k: {n: v.shape for n, v in p.items()} for k, p in params.items()} == {
        "SpatialLearnedEmbeddings_0": {"kernel": (side, side, 64, 8)},
        "Dense_0": {"kernel": (64 * 8, 32), "bias": (32,)},
        "LayerNorm_0": {"scale": (32,), "bias": (32,)},
    }
    np.testing.assert_allclose(head.apply({"params": params}, maps, False), _layered_head(params, maps),
                               atol=2e-5)
    # Without dropout a training pass may take the product order too: the same gradients.
    no_dropout = ImageHead(num_features=8, dropout=0.0, out_dim=32)
    grads = jax.grad(lambda p: jnp.sum(no_dropout.apply({"params": p}, maps, True) ** 2))(params)
    reference = jax.grad(lambda p: jnp.sum(_layered_head(p, maps) ** 2))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4), grads, reference)
    # With dropout, training passes mask the embedding: outputs differ from the deterministic ones.
    trained = head.apply({"params": params}, maps, True, rngs={"dropout": jax.random.PRNGKey(2)})
    assert not np.allclose(trained, _layered_head(params, maps), atol=1e-3)


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5])
def test_dropout_keeps_each_element_independently_at_the_rate(rate):
    """Two 16-bit uniforms per random word: every element, both halves of every word and every
    row kept at 1 - rate; the keep probability returned is the exact one used for scaling."""
    shape = (512, 4097)  # an odd width: the last word's second half is dropped
    keep, keep_prob = dropout_keep_mask(jax.random.PRNGKey(0), shape, rate)
    assert keep.shape == shape and keep.dtype == jnp.bool_
    assert keep_prob == 1.0 - round(rate * DROPOUT_RESOLUTION) / DROPOUT_RESOLUTION
    assert abs(keep_prob - (1.0 - rate)) < 1.0 / DROPOUT_RESOLUTION
    keep = np.asarray(keep)
    if rate == 0.0:
        assert keep.all()
        return
    sigma = np.sqrt(keep_prob * (1 - keep_prob) / keep.size)
    assert abs(keep.mean() - keep_prob) < 5 * sigma
    for part in (keep[:, 0::2], keep[:, 1::2], keep[: len(keep) // 2], keep[len(keep) // 2:]):
        assert abs(part.mean() - keep_prob) < 8 * sigma
    # Independent elements: rows differ, and neighbours agree as often as chance says.
    assert len({row.tobytes() for row in keep[:64]}) == 64
    agree = (keep[:, :-1] == keep[:, 1:]).mean()
    assert abs(agree - (keep_prob ** 2 + (1 - keep_prob) ** 2)) < 8 * sigma
    other, _ = dropout_keep_mask(jax.random.PRNGKey(1), shape, rate)
    assert (np.asarray(other) != keep).any()


def test_image_head_dropout_is_unbiased_and_off_outside_training():
    """Dropout scales what it keeps by the exact keep probability: the masked embedding averages to
    the unmasked one. Outside training nothing is masked."""
    head = ImageHead(num_features=8, dropout=0.5, out_dim=16)
    maps = jax.random.normal(jax.random.PRNGKey(1), (8, 1, 1, 16))
    params = head.init(jax.random.PRNGKey(0), maps, False)["params"]
    embed = params["SpatialLearnedEmbeddings_0"]["kernel"]
    x = jnp.einsum("bhwc,hwcf->bcf", maps, embed).reshape(8, -1)

    masked = jax.vmap(lambda key: dropout(key, x, head.dropout))(jax.random.split(jax.random.PRNGKey(3), 4000))
    assert 0.45 < float((masked == 0).mean()) < 0.55
    mean = masked.mean(0)
    np.testing.assert_allclose(mean, x, atol=0.06 * float(jnp.abs(x).max()))
    np.testing.assert_array_equal(head.apply({"params": params}, maps, False),
                                  head.apply({"params": params}, maps, False))
    outs = [head.apply({"params": params}, maps, True, rngs={"dropout": jax.random.PRNGKey(k)}) for k in (4, 5)]
    assert not np.allclose(outs[0], outs[1])


def test_image_head_on_small_maps_costs_the_product_not_the_embedding():
    """32x32 frames give 1x1x512 maps: the 8x512 embedding -> Dense 256 is 4096 x 256 per sample,
    the product of the two kernels 512 x 256 (what a train-gym update runs in its target and actor
    passes)."""
    head = ImageHead(num_features=8, dropout=0.1, out_dim=256)
    maps = jnp.zeros((256, 1, 1, 512))
    params = head.init(jax.random.PRNGKey(0), maps, False)

    def flops(fn):
        cost = jax.jit(fn).lower(params, maps).compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]

    layered = flops(lambda p, x: _layered_head(p["params"], x))
    assert flops(lambda p, x: head.apply(p, x, False)) < layered / 4
