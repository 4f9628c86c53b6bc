"""Pretrained backbone weights from local files (nothing is downloaded here; `agent.weights`
fetches the published ones).

- This project's native format (what `franka-rl weights fetch/convert` write, the default): an
  `.npz` of the Flax backbone parameter tree, one array per leaf named by its path
  (`stage0_block0/conv1/kernel`), plus a JSON record under `__franka_rl_weights__` (backbone,
  source URL, sha256 of the source file, conversion version). Read without pickle.
- ResNet-18/34: a torchvision state dict (`resnet18-f37072fd.pth` etc., or any file saved with
  `torch.save(model.state_dict())` using torchvision's parameter names). Read with
  `torch.load(weights_only=True)`; torch comes with the optional `pretrained` extra
  (`pip install 'franka-rl[pretrained]'`), torchvision is not needed. Batch norm is folded into a
  per-channel scale and bias (evaluation-mode batch norm, exactly).
- ResNet-10: SERL's `resnet10_params.pkl` (its release asset "resnet10"). It is a Python pickle:
  loading a pickle can run arbitrary code, so only name files you trust.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from agent.vision import STAGE_SIZES
from robot_env.errors import UserError

_log = logging.getLogger(__name__)

BN_EPS = 1e-5  # torchvision's BatchNorm2d default


class PretrainedWeightsError(UserError, RuntimeError):
    """Missing, unreadable or incompatible pretrained weights; the message says what to do."""



_WHERE = {
    "resnet10": "SERL's resnet10_params.pkl (github.com/rail-berkeley/serl, release 'resnet10')",
    "resnet18": "torchvision's resnet18 ImageNet state dict (resnet18-f37072fd.pth)",
    "resnet34": "torchvision's resnet34 ImageNet state dict (resnet34-b627a593.pth)",
}

#: The key of the JSON metadata record inside a native weights file.
META_KEY = "__franka_rl_weights__"
NATIVE_FORMAT = "franka-rl-backbone"
#: Bumped whenever the conversion of a published file into native params changes.
CONVERSION_VERSION = 1


def missing_file_message(path: Path, backbone: str, key: str) -> str:
    return (
        f"backbone weights file {path} not found: run `franka-rl weights fetch {backbone}` on a machine with "
        f"internet (it prints where the file goes; copy it to {path} on an offline PC), or convert "
        f"{_WHERE[backbone]} with `franka-rl weights convert FILE --backbone {backbone}`, or set {key}='' "
        "to accept a random backbone"
    )


def is_native_file(path: str | Path) -> bool:
    """Whether `path` is a zip (an `.npz`) holding this project's weights record."""
    try:
        with zipfile.ZipFile(path) as archive:
            return f"{META_KEY}.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def load_backbone_params(path: str | Path, backbone: str, key: str = "agent.encoder.pretrained_path") -> dict:
    """Flax params for `make_backbone(backbone)` from a local weights file: this project's `.npz`
    (checked against the built network), SERL's pickle (resnet10) or a torchvision state dict.
    `key`: the config key that named the file, for the messages."""
    path = Path(path).expanduser()
    if backbone not in STAGE_SIZES:
        raise PretrainedWeightsError(f"unknown backbone '{backbone}'; choose one of {sorted(STAGE_SIZES)}")
    if not path.is_file():
        raise PretrainedWeightsError(missing_file_message(path, backbone, key))
    if path.suffix == ".npz" or is_native_file(path):
        params, meta = load_native(path)
        if meta.get("backbone") != backbone:
            raise PretrainedWeightsError(
                f"{path} holds {meta.get('backbone')} weights but the config asks for {backbone}: set the "
                f"backbone to {meta.get('backbone')} or {key} to a {backbone} file")
        _check_shapes(params, backbone, str(path))
        return params
    return import_published(path, backbone)


def import_published(path: str | Path, backbone: str) -> dict:
    """Flax params from a published file: SERL's pickle (resnet10) or a torchvision state dict."""
    if backbone == "resnet10":
        return import_serl_resnet10(path)
    return import_torchvision_resnet(path, backbone)


# ---------------------------------------------------------------------------------------------
# native format


def flatten_params(params: dict) -> dict[str, np.ndarray]:
    """{"a/b/kernel": array} from a nested param tree."""
    out: dict[str, np.ndarray] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) or hasattr(node, "items"):
            for name, child in node.items():
                if "/" in str(name):
                    raise ValueError(f"parameter name {name!r} contains '/'")
                walk(f"{prefix}/{name}" if prefix else str(name), child)
        else:
            out[prefix] = np.asarray(node, dtype=np.float32)

    walk("", params)
    return out


def unflatten_params(flat: dict[str, np.ndarray]) -> dict:
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def save_native(path: str | Path, params: dict, meta: dict) -> Path:
    """Write `params` and the JSON record `meta` as a native `.npz`, atomically (temp + rename)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise PretrainedWeightsError(f"{path}: a converted weights file ends in .npz")
    flat = flatten_params(params)
    record = {"format": NATIVE_FORMAT, "conversion_version": CONVERSION_VERSION, **meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **flat, **{META_KEY: np.array(json.dumps(record, sort_keys=True))})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_native_meta(path: str | Path) -> dict:
    return load_native(path, arrays=False)[1]


def load_native(path: str | Path, arrays: bool = True) -> tuple[dict, dict]:
    """(param tree, metadata) from a native `.npz`; never unpickles."""
    path = Path(path).expanduser()
    try:
        with np.load(path, allow_pickle=False) as data:
            if META_KEY not in data.files:
                raise PretrainedWeightsError(
                    f"{path} is an .npz without a franka-rl weights record: make it with "
                    "`franka-rl weights fetch NAME` or `franka-rl weights convert FILE --backbone NAME`")
            meta = json.loads(str(data[META_KEY]))
            flat = {k: data[k] for k in data.files if k != META_KEY} if arrays else {}
    except PretrainedWeightsError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise PretrainedWeightsError(f"cannot read {path} as a franka-rl weights file: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != NATIVE_FORMAT:
        raise PretrainedWeightsError(f"{path}: unknown weights record {str(meta)[:80]}")
    if int(meta.get("conversion_version", 0)) > CONVERSION_VERSION:
        raise PretrainedWeightsError(
            f"{path} was written by a newer franka-rl (conversion version {meta['conversion_version']}, this "
            f"one reads up to {CONVERSION_VERSION}): update franka-rl or convert the source file again")
    return unflatten_params(flat), meta


def check_backbone_params(params: dict, backbone: str, source: str) -> None:
    """Raise PretrainedWeightsError naming the first leaf whose shape differs from `backbone`'s."""
    _check_shapes(params, backbone, source)


# ---------------------------------------------------------------------------------------------
# torchvision


def _torch_state_dict(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise PretrainedWeightsError(
            f"reading torchvision weights ({path}) needs PyTorch: pip install 'franka-rl[pretrained]'"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        raise PretrainedWeightsError(f"cannot read {path} as a torch state dict: {exc}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{path} does not hold a state dict (found {type(state).__name__})")
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if hasattr(value, "detach"):
            out[key] = value.detach().cpu().numpy()
    return out


def _conv_kernel(weight: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)), dtype=np.float32)  # OIHW -> HWIO


def _fold_bn(sd: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    gamma = sd[f"{prefix}.weight"].astype(np.float64)
    beta = sd[f"{prefix}.bias"].astype(np.float64)
    mean = sd[f"{prefix}.running_mean"].astype(np.float64)
    var = sd[f"{prefix}.running_var"].astype(np.float64)
    scale = gamma / np.sqrt(var + BN_EPS)
    return {"scale": scale.astype(np.float32), "bias": (beta - mean * scale).astype(np.float32)}


def torchvision_to_flax(sd: dict[str, np.ndarray], backbone: str) -> dict:
    """Map a torchvision ResNet state dict onto our ResNet params (fc and BN counters are ignored)."""
    try:
        params: dict[str, Any] = {
            "stem_conv": {"kernel": _conv_kernel(sd["conv1.weight"])},
            "stem_norm": _fold_bn(sd, "bn1"),
        }
        for stage, blocks in enumerate(STAGE_SIZES[backbone]):
            for block in range(blocks):
                src = f"layer{stage + 1}.{block}"
                dst: dict[str, Any] = {
                    "conv1": {"kernel": _conv_kernel(sd[f"{src}.conv1.weight"])},
                    "norm1": _fold_bn(sd, f"{src}.bn1"),
                    "conv2": {"kernel": _conv_kernel(sd[f"{src}.conv2.weight"])},
                    "norm2": _fold_bn(sd, f"{src}.bn2"),
                }
                if f"{src}.downsample.0.weight" in sd:
                    dst["proj_conv"] = {"kernel": _conv_kernel(sd[f"{src}.downsample.0.weight"])}
                    dst["proj_norm"] = _fold_bn(sd, f"{src}.downsample.1")
                params[f"stage{stage}_block{block}"] = dst
    except KeyError as exc:
        raise PretrainedWeightsError(
            f"the state dict lacks {exc.args[0]!r}: it is not a torchvision {backbone} "
            "(check agent.encoder.backbone against the file)"
        ) from None
    extra_blocks = [k for k in sd if k.startswith("layer") and int(k.split(".")[1]) >= STAGE_SIZES[backbone][int(k[5]) - 1]]
    if extra_blocks:
        raise PretrainedWeightsError(
            f"the state dict has more blocks than {backbone} (e.g. {extra_blocks[0]}): "
            "check agent.encoder.backbone against the file"
        )
    return params


def import_torchvision_resnet(path: str | Path, backbone: str = "resnet18") -> dict:
    params = torchvision_to_flax(_torch_state_dict(Path(path)), backbone)
    _check_shapes(params, backbone, str(path))
    return params


# ---------------------------------------------------------------------------------------------
# SERL ResNet-10

_SERL_BLOCK_NAMES = {
    "Conv_0": "conv1",
    "MyGroupNorm_0": "norm1",
    "Conv_1": "conv2",
    "MyGroupNorm_1": "norm2",
    "conv_proj": "proj_conv",
    "norm_proj": "proj_norm",
}


def serl_to_flax(serl: dict) -> dict:
    """Rename SERL's ResNetEncoder params (conv_init, norm_init, ResNetBlock_i/...) to ours."""
    for wrapper in ("params", "pretrained_encoder"):
        if isinstance(serl, dict) and wrapper in serl and "conv_init" not in serl:
            serl = serl[wrapper]
    if not isinstance(serl, dict) or "conv_init" not in serl:
        found = sorted(serl)[:6] if isinstance(serl, dict) else type(serl).__name__
        raise PretrainedWeightsError(f"not SERL ResNet-10 parameters: expected 'conv_init' at the top, found {found}")
    as_np = jax.tree.map(lambda x: np.asarray(x, dtype=np.float32), dict(serl))
    params: dict[str, Any] = {"stem_conv": as_np["conv_init"], "stem_norm": as_np["norm_init"]}
    for stage in range(len(STAGE_SIZES["resnet10"])):
        name = f"ResNetBlock_{stage}"
        if name not in as_np:
            raise PretrainedWeightsError(f"SERL ResNet-10 parameters lack '{name}'")
        block = {}
        for src, value in as_np[name].items():
            if src not in _SERL_BLOCK_NAMES:
                raise PretrainedWeightsError(f"unexpected SERL parameter '{name}/{src}'")
            block[_SERL_BLOCK_NAMES[src]] = value
        params[f"stage{stage}_block0"] = block
    return params


def import_serl_resnet10(path: str | Path) -> dict:
    """SERL's ResNet-10 pickle -> our params. Loading a pickle runs code: trusted files only."""
    _log.warning("loading %s with pickle: this runs code from the file; only load files you trust", path)
    try:
        with open(path, "rb") as f:
            serl = pickle.load(f)  # noqa: S301 - a file the user named, documented as trusted
    except Exception as exc:
        raise PretrainedWeightsError(f"cannot unpickle {path}: {exc}") from None
    params = serl_to_flax(serl)
    _check_shapes(params, "resnet10", str(path))
    return params


def _check_shapes(params: dict, backbone: str, source: str) -> None:
    """Compare against a freshly initialised backbone; raise naming the first mismatch."""
    import jax.numpy as jnp

    from agent.vision import make_backbone

    template = jax.eval_shape(
        lambda: make_backbone(backbone).init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3), jnp.uint8))["params"]
    )
    flat_t = {"/".join(str(k.key) for k in path): leaf.shape
              for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]}
    flat_p = {"/".join(str(k.key) for k in path): np.shape(leaf)
              for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    for name, shape in flat_t.items():
        if name not in flat_p:
            raise PretrainedWeightsError(f"{source}: parameter {name} missing for {backbone}")
        if tuple(flat_p[name]) != tuple(shape):
            raise PretrainedWeightsError(
                f"{source}: parameter {name} has shape {tuple(flat_p[name])}, {backbone} needs {tuple(shape)}"
            )
    unknown = sorted(set(flat_p) - set(flat_t))
    if unknown:
        raise PretrainedWeightsError(f"{source}: parameters {unknown[:4]} do not belong to {backbone}")
