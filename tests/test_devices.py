"""Which device the learner and pre-training compute on is said at start, and a GPU that was
asked for but is not there stops the command in one line; a real-mode run on a random frozen
backbone warns."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.devices import DeviceError, use_device
from franka_rl.assemble import warn_random_backbone
from franka_rl.config import CONFIG_DIR, load_config


def test_auto_names_the_backend_and_gpu_refuses_the_cpu():
    import jax

    if jax.default_backend() != "cpu":
        pytest.skip("this check is for a machine without a GPU")
    line = use_device("auto", "learner.device")
    assert line.startswith("JAX backend cpu: ") and "no GPU found" in line
    with pytest.raises(DeviceError, match=r"learner.device=gpu but JAX runs on the CPU.*franka-rl\[gpu\]"):
        use_device("gpu", "learner.device")
    with pytest.raises(DeviceError, match="must be one of"):
        use_device("tpu9", "pretrain.device")


def test_the_learner_command_refuses_a_missing_gpu_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "franka_rl", "learner", "env.cameras=[]", f"output_dir={tmp_path}",
         "learner.device=gpu"], capture_output=True, text=True, timeout=120)
    import jax

    if jax.default_backend() != "cpu":
        pytest.skip("this check is for a machine without a GPU")
    assert result.returncode == 2, result.stderr
    assert "learner.device=gpu" in result.stderr and "Traceback" not in result.stderr


def test_real_mode_with_a_random_frozen_backbone_warns():
    lines: list[str] = []
    cfg = load_config(CONFIG_DIR / "peg_insertion_real.yaml", ["agent.encoder.pretrained_path=''"])
    warn_random_backbone(cfg, lines.append)
    assert len(lines) == 1 and "RANDOM weights" in lines[0] and "franka-rl weights fetch" in lines[0]
    lines.clear()
    warn_random_backbone(load_config(CONFIG_DIR / "peg_insertion_real.yaml",
                                     ["agent.encoder.pretrained_path=weights/resnet10.npz"]), lines.append)
    assert lines == []
    warn_random_backbone(load_config(None, ["agent.encoder.pretrained_path=''"]), lines.append)
    assert lines == []  # the twin's cameras are fine with random features
