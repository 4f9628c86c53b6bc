"""`franka-rl weights fetch/convert/info` against a loopback HTTP server (no network): the server
serves files this test makes in the published layouts at the real networks' sizes (a pickle of
SERL's ResNet-10 param tree; a torch state dict with torchvision's ResNet-18 keys). A fetch
verifies the sha256, converts into the native .npz, and the encoder the real config builds loads
it: its features are the reference network's and not a random initialisation's."""

from __future__ import annotations

import hashlib
import io
import pickle
import socket
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_agent_pretrained import _SerlResNet10, _torch_reference_resnet18  # noqa: E402

from agent.core import agent_encode_frames, encode_frames
from agent.pretrained import (
    CONVERSION_VERSION,
    PretrainedWeightsError,
    load_backbone_params,
    load_native,
    read_native_meta,
    save_native,
)
from agent.vision import IMAGENET_MEAN, IMAGENET_STD
from agent.weights import REGISTRY, default_native_path
from franka_rl.assemble import build_agent
from franka_rl.cli import main
from franka_rl.config import CONFIG_DIR, load_config

REAL_CONFIG = CONFIG_DIR / "peg_insertion_real.yaml"
# Smaller critics and actor than the real config's, so building the agent is quick; the image
# encoder (backbone, cameras, image size) stays the real config's.
SMALL_HEADS = ["agent.network.num_critics=2", "agent.network.critic_hidden_dims=[8]",
               "agent.network.actor_hidden_dims=[8]", "agent.encoder.image_head_dim=8"]


# ------------------------------------------------------------------------------ the server


class _Files:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()  # send the full Content-Length, then half the bytes
        self.stall: set[str] = set()  # send half the bytes, then nothing


def _handler(files: _Files):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            data = files.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.path in files.truncate:
                self.wfile.write(data[: len(data) // 2])
                self.close_connection = True
            elif self.path in files.stall:
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                time.sleep(2.0)
            else:
                self.wfile.write(data)

        def log_message(self, *args):
            pass

    return Handler


@pytest.fixture(scope="module")
def server():
    files = _Files()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(files))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    files.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield files
    httpd.shutdown()
    httpd.server_close()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------ published files


def make_serl_pickle(seed: int = 7) -> tuple[bytes, dict]:
    """(pickle bytes, param tree) in SERL's layout (conv_init, norm_init, ResNetBlock_i/Conv_0 ...),
    at ResNet-10's real size; values random with non-trivial norms."""
    shapes = jax.eval_shape(lambda: _SerlResNet10().init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3), jnp.uint8)))
    rng = np.random.default_rng(seed)

    def value(path, leaf):
        name = jax.tree_util.keystr(path)
        if "kernel" in name:
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        if "scale" in name:
            return (1.0 + 0.2 * rng.standard_normal(leaf.shape)).astype(np.float32)
        return (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(value, shapes["params"])
    params = jax.tree_util.tree_map(np.asarray, dict(params))
    count = sum(v.size for v in jax.tree_util.tree_leaves(params))
    assert 4_800_000 < count < 5_000_000  # ResNet-10 at width 64: 4.9 M parameters
    return pickle.dumps(params), params


@pytest.fixture(scope="module")
def serl_pickle():
    return make_serl_pickle()


@pytest.fixture(scope="module")
def torchvision_file():
    """(torch.save bytes, the torch model) of a ResNet-18 with torchvision's key names and shapes."""
    torch, model = _torch_reference_resnet18()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    keys = set(model.state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer4.1.bn2.num_batches_tracked", "fc.weight",
            "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_mean"} <= keys
    return buffer.getvalue(), model


def _fetch(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["weights", "fetch", *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("franka-rl weights: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


FRAMES = np.random.default_rng(3).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------ fetch, end to end


def test_fetch_resnet10_verifies_converts_and_the_real_config_loads_it(server, serl_pickle, tmp_path, capsys):
    data, serl_params = serl_pickle
    server.files["/serl/resnet10_params.pkl"] = data
    url = f"{server.url}/serl/resnet10_params.pkl"
    rc, out, err = _fetch(capsys, "resnet10", "--url", url, "--sha256", _sha256(data).upper(),
                          "--dest", str(tmp_path / "cache"))
    assert rc == 0, err
    path = Path(out.strip().splitlines()[-1])
    assert path == tmp_path / "cache" / "resnet10.npz" and path.is_file()
    assert "agent.encoder.pretrained_path" in err and "classifier.pretrained_path" in err
    assert sorted(p.name for p in path.parent.iterdir()) == ["resnet10.npz", "resnet10_params.pkl"]
    meta = read_native_meta(path)
    assert meta["backbone"] == "resnet10" and meta["source_url"] == url
    assert meta["source_sha256"] == _sha256(data) and meta["conversion_version"] == CONVERSION_VERSION

    cfg = load_config(REAL_CONFIG, [f"agent.encoder.pretrained_path={path}", *SMALL_HEADS])
    agent = build_agent(cfg)
    features = np.asarray(agent_encode_frames(agent, FRAMES))
    expected = np.asarray(jax.jit(_SerlResNet10().apply)({"params": serl_params}, FRAMES))
    assert features.shape == (2, 4, 4, 512)
    np.testing.assert_allclose(features, expected, atol=1e-4, rtol=1e-4)
    # The same agent with the random initialisation create_agent makes without a pretrained path.
    random_init = jax.jit(agent.nets.backbone.init)(jax.random.PRNGKey(cfg.seed), FRAMES[:1])["params"]
    random_features = np.asarray(agent_encode_frames(agent.replace(frozen_backbone=random_init), FRAMES))
    assert np.abs(features - random_features).mean() > 0.1 * np.abs(features).mean()

    # A second fetch finds the converted file and downloads nothing.
    server.files.pop("/serl/resnet10_params.pkl")
    rc, out, err = _fetch(capsys, "resnet10", "--url", url, "--sha256", _sha256(data), "--dest", str(path.parent))
    assert rc == 0 and Path(out.strip()) == path and "already holds" in err


def test_fetch_resnet18_in_torchvision_layout_matches_torch(server, torchvision_file, tmp_path, capsys, monkeypatch):
    torch = pytest.importorskip("torch")
    data, model = torchvision_file
    server.files["/models/resnet18-f37072fd.pth"] = data
    url = f"{server.url}/models/resnet18-f37072fd.pth"
    dest = tmp_path / "cache"
    # Without --sha256 the registry's pin applies: torchvision's published prefix f37072fd,
    # which this file (not torchvision's) does not have.
    rc, out, err = _fetch(capsys, "resnet18", "--url", url, "--dest", str(dest))
    assert rc == 2 and out == ""
    assert "sha256 prefix f37072fd" in _one_error_line(err)
    assert list(dest.iterdir()) == []
    # With the registry's prefix being this file's, the prefix alone is what is verified.
    monkeypatch.setitem(REGISTRY, "resnet18", replace(REGISTRY["resnet18"], sha256_prefix=_sha256(data)[:8]))
    monkeypatch.setenv("FRANKA_RL_WEIGHTS_DIR", str(dest))
    rc, out, err = _fetch(capsys, "resnet18", "--url", url)
    assert rc == 0, err
    path = Path(out.strip())
    assert path == dest / "resnet18.npz"
    assert read_native_meta(path)["source_sha256"] == _sha256(data)
    assert f"full sha256 {_sha256(data)}" in err

    # The real config's encoder with backbone resnet18 (the agent's own loading is covered by the
    # resnet10 test; a second agent build costs seconds here).
    enc = load_config(REAL_CONFIG, ["agent.encoder.backbone=resnet18", f"agent.encoder.pretrained_path={path}"]).agent.encoder
    features = np.asarray(encode_frames(load_backbone_params(enc.pretrained_path, enc.backbone), FRAMES, enc.backbone))
    x = torch.from_numpy(FRAMES).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.features(x).permute(0, 2, 3, 1).numpy()
    assert features.shape == expected.shape == (2, 4, 4, 512)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(features / scale, expected / scale, atol=1e-4)


# ------------------------------------------------------------------------------ failures


def test_wrong_sha256_is_one_line_and_leaves_no_file(server, tmp_path, capsys):
    data = b"not the published weights" * 1000
    server.files["/wrong.pkl"] = data
    dest = tmp_path / "cache"
    rc, out, err = _fetch(capsys, "resnet10", "--url", f"{server.url}/wrong.pkl", "--sha256", "ab" * 32,
                          "--dest", str(dest))
    assert rc == 2 and out == ""
    line = _one_error_line(err)
    assert f"sha256 {_sha256(data)} does not match the pinned sha256 {'ab' * 32}" in line
    assert "deleted" in line
    assert list(dest.iterdir()) == []


def test_server_down_is_one_line(tmp_path, capsys):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dest = tmp_path / "cache"
    rc, out, err = _fetch(capsys, "resnet10", "--url", f"http://127.0.0.1:{port}/resnet10_params.pkl",
                          "--sha256", "ab" * 32, "--dest", str(dest))
    assert rc == 2 and out == ""
    line = _one_error_line(err)
    assert f"cannot download http://127.0.0.1:{port}/resnet10_params.pkl" in line and "refused" in line.lower()
    assert "copy the .npz" in line
    assert list(dest.iterdir()) == []


def test_truncated_download_is_one_line_and_leaves_no_file(server, tmp_path, capsys):
    data = bytes(range(256)) * 4096  # 1 MiB
    server.files["/short.pkl"] = data
    server.truncate.add("/short.pkl")
    dest = tmp_path / "cache"
    rc, out, err = _fetch(capsys, "resnet10", "--url", f"{server.url}/short.pkl", "--sha256", _sha256(data),
                          "--dest", str(dest))
    assert rc == 2 and out == ""
    line = _one_error_line(err)
    assert "incomplete" in line and f"of {len(data)} bytes" in line
    assert list(dest.iterdir()) == []


def test_stalled_download_times_out_in_one_line(server, tmp_path, capsys):
    data = bytes(1000)
    server.files["/stall.pkl"] = data
    server.stall.add("/stall.pkl")
    dest = tmp_path / "cache"
    rc, out, err = _fetch(capsys, "resnet10", "--url", f"{server.url}/stall.pkl", "--sha256", _sha256(data),
                          "--dest", str(dest), "--timeout", "0.3")
    assert rc == 2 and out == ""
    assert "stalled for 0.3 s" in _one_error_line(err)
    assert list(dest.iterdir()) == []


def test_pinned_resnet10_refuses_another_file(server, tmp_path, capsys):
    """Without --sha256, SERL's file is checked against the registry's pin."""
    data = b"not SERL's weights" * 100
    server.files["/other.pkl"] = data
    dest = tmp_path / "cache"
    rc, out, err = _fetch(capsys, "resnet10", "--url", f"{server.url}/other.pkl", "--dest", str(dest))
    assert rc == 2 and out == ""
    assert f"sha256 {_sha256(data)} does not match the pinned sha256 {REGISTRY['resnet10'].sha256}" in _one_error_line(err)
    assert list(dest.iterdir()) == []


def test_no_pin_and_no_sha256_refuses_before_downloading(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(REGISTRY, "resnet10", replace(REGISTRY["resnet10"], sha256=None))
    rc, out, err = _fetch(capsys, "resnet10", "--url", "http://127.0.0.1:9/never", "--dest", str(tmp_path))
    assert rc == 2
    line = _one_error_line(err)
    assert "no sha256 is pinned for resnet10" in line and "--sha256" in line
    rc, _, err = _fetch(capsys, "resnet10", "--sha256", "12345", "--dest", str(tmp_path))
    assert rc == 2 and "64 hex digits" in _one_error_line(err)
    rc, _, err = _fetch(capsys, "resnet99", "--dest", str(tmp_path))
    assert rc == 2 and "unknown weights 'resnet99'" in _one_error_line(err)


# ------------------------------------------------------------------------------ convert, info, load


def test_convert_and_info(serl_pickle, tmp_path, capsys):
    data, _ = serl_pickle
    src = tmp_path / "resnet10_params.pkl"
    src.write_bytes(data)
    assert main(["weights", "convert", str(src), "--backbone", "resnet10"]) == 0
    out = capsys.readouterr().out
    path = Path(out.strip())
    assert path == tmp_path / "resnet10_params.npz"
    assert read_native_meta(path)["source_sha256"] == _sha256(data)
    assert main(["weights", "info", str(path)]) == 0
    info = capsys.readouterr().out
    assert "backbone: resnet10" in info and f"source_sha256: {_sha256(data)}" in info
    assert "every shape matches resnet10" in info


def test_load_names_the_first_mismatched_leaf(serl_pickle, tmp_path):
    src = tmp_path / "resnet10_params.pkl"
    src.write_bytes(serl_pickle[0])
    good = tmp_path / "good.npz"
    assert main(["weights", "convert", str(src), "--backbone", "resnet10", "--out", str(good)]) == 0
    params, meta = load_native(good)
    params["stage1_block0"]["conv2"]["kernel"] = np.zeros((3, 3, 128, 64), np.float32)
    bad = save_native(tmp_path / "bad.npz", params, {k: v for k, v in meta.items() if k != "format"})
    with pytest.raises(PretrainedWeightsError) as info:
        load_backbone_params(bad, "resnet10")
    message = str(info.value)
    assert "stage1_block0/conv2/kernel has shape (3, 3, 128, 64), resnet10 needs (3, 3, 128, 128)" in message
    assert "\n" not in message
    with pytest.raises(PretrainedWeightsError, match="holds resnet10 weights but the config asks for resnet18"):
        load_backbone_params(good, "resnet18")


# ------------------------------------------------------------------------------ the real config


def test_real_config_points_both_encoders_at_the_fetched_resnet10():
    cfg = load_config(REAL_CONFIG)
    assert cfg.agent.encoder.backbone == cfg.classifier.backbone == "resnet10"
    assert cfg.agent.encoder.pretrained_path == cfg.classifier.pretrained_path == default_native_path("resnet10")
    assert default_native_path("resnet10") == "~/.cache/franka_rl/weights/resnet10.npz"


@pytest.mark.parametrize("command", [["actor"], ["train-classifier", "--data", "runs/none"]])
def test_real_run_without_the_file_fails_in_one_line_before_the_arm(command, tmp_path, monkeypatch, capsys):
    """The shipped real config with no fetched file: one line naming the fetch command, before any
    robot connection (the config's arm address is not reachable from here)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    rc = main([*command, "--config", str(REAL_CONFIG)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    line = [x for x in err.splitlines() if x.strip()][-1]
    expected = tmp_path / ".cache" / "franka_rl" / "weights" / "resnet10.npz"
    assert f"backbone weights file {expected} not found: run `franka-rl weights fetch resnet10`" in line
    assert ("classifier.pretrained_path=''" if command[0] == "train-classifier"
            else "agent.encoder.pretrained_path=''") in line
