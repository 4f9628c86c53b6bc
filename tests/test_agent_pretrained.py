"""Pretrained backbone importers: torchvision ResNet-18 state dicts and SERL's ResNet-10 pickle."""

import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agent.pretrained import (
    PretrainedWeightsError,
    import_serl_resnet10,
    import_torchvision_resnet,
    load_backbone_params,
)
from agent.vision import IMAGENET_MEAN, IMAGENET_STD, make_backbone


def _torch_reference_resnet18():
    """A ResNet-18 trunk in plain torch with torchvision's module names (torchvision does not import here)."""
    torch = pytest.importorskip("torch", reason="torch is optional (pip install 'franka-rl[pretrained]')")
    tnn = torch.nn

    class Block(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.relu = tnn.ReLU()
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return self.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet18(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = tnn.BatchNorm2d(64)
            self.relu = tnn.ReLU()
            self.maxpool = tnn.MaxPool2d(3, 2, 1)
            widths = [64, 128, 256, 512]
            cin = 64
            for i, w in enumerate(widths):
                stride = 1 if i == 0 else 2
                setattr(self, f"layer{i + 1}", tnn.Sequential(Block(cin, w, stride), Block(w, w, 1)))
                cin = w
            self.fc = tnn.Linear(512, 1000)

        def features(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            for i in range(4):
                x = getattr(self, f"layer{i + 1}")(x)
            return x

    torch.manual_seed(0)
    model = ResNet18()
    # Non-trivial batch-norm statistics, so that folding them is actually tested.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, tnn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return torch, model.eval()


def test_torchvision_resnet18_matches_torch(tmp_path):
    torch, model = _torch_reference_resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), path)

    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.features(x).permute(0, 2, 3, 1).numpy()

    params = load_backbone_params(path, "resnet18")
    ours = np.asarray(make_backbone("resnet18").apply({"params": params}, jnp.asarray(images)))
    assert ours.shape == expected.shape == (2, 2, 2, 512)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(ours / scale, expected / scale, atol=1e-4)


def test_torchvision_wrong_depth_is_named(tmp_path):
    torch, model = _torch_reference_resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(PretrainedWeightsError, match="resnet34"):
        import_torchvision_resnet(path, "resnet34")


def test_missing_file_says_where_to_put_it(tmp_path):
    path = tmp_path / "weights" / "resnet10_params.pkl"
    with pytest.raises(PretrainedWeightsError, match="resnet10_params.pkl.*copy it to"):
        load_backbone_params(path, "resnet10")


class _SerlGroupNorm(nn.GroupNorm):
    """Named like SERL's MyGroupNorm so Flax names the params MyGroupNorm_0/1."""


_SerlGroupNorm.__name__ = "MyGroupNorm"


class _SerlBlock(nn.Module):
    filters: int
    strides: int

    @nn.compact
    def __call__(self, x):
        norm = lambda **kw: _SerlGroupNorm(num_groups=4, epsilon=1e-5, **kw)  # noqa: E731
        conv = lambda *a, **kw: nn.Conv(*a, use_bias=False, **kw)  # noqa: E731
        y = conv(self.filters, (3, 3), (self.strides, self.strides), name="Conv_0")(x)
        y = nn.relu(norm(name="MyGroupNorm_0")(y))
        y = conv(self.filters, (3, 3), name="Conv_1")(y)
        y = norm(name="MyGroupNorm_1")(y)
        if x.shape != y.shape:
            x = conv(self.filters, (1, 1), (self.strides, self.strides), name="conv_proj")(x)
            x = norm(name="norm_proj")(x)
        return nn.relu(x + y)


class _SerlResNet10(nn.Module):
    """An independent re-statement of SERL's ResNet-10 layout (names, padding, norm), for the test."""

    @nn.compact
    def __call__(self, images):
        x = (images.astype(jnp.float32) / 255.0 - jnp.array(IMAGENET_MEAN)) / jnp.array(IMAGENET_STD)
        x = nn.Conv(64, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False, name="conv_init")(x)
        x = nn.relu(_SerlGroupNorm(num_groups=4, epsilon=1e-5, name="norm_init")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i in range(4):
            x = _SerlBlock(64 * 2**i, 2 if i > 0 else 1, name=f"ResNetBlock_{i}")(x)
        return x


def test_serl_resnet10_pickle_matches_serl_layout(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    reference = _SerlResNet10()
    serl_params = reference.init(jax.random.PRNGKey(3), images)["params"]
    # Non-trivial norm parameters.
    serl_params = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(len(str(p))), x.shape)
        if "MyGroupNorm" in str(p) or "norm" in str(p) else x,
        serl_params,
    )
    path = tmp_path / "resnet10_params.pkl"
    with open(path, "wb") as f:
        pickle.dump(jax.tree.map(np.asarray, serl_params), f)
    expected = np.asarray(reference.apply({"params": serl_params}, images))

    params = import_serl_resnet10(path)
    ours = np.asarray(make_backbone("resnet10").apply({"params": params}, images))
    assert ours.shape == (2, 2, 2, 512)
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=1e-4)


def test_serl_pickle_with_wrong_content(tmp_path):
    path = tmp_path / "bad.pkl"
    with open(path, "wb") as f:
        pickle.dump({"something": np.zeros(3)}, f)
    with pytest.raises(PretrainedWeightsError, match="conv_init"):
        import_serl_resnet10(path)
