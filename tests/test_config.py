import math

import pytest

from franka_rl.assemble import config_hash
from franka_rl.config import CONFIG_DIR, ConfigError, load_config


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_load_and_overrides_apply(tmp_path):
    cfg = load_config(write(tmp_path, "task:\n  max_episode_steps: 50\n"), ["env.control_hz=20", "seed=3"])
    assert cfg.task.max_episode_steps == 50
    assert cfg.env.control_hz == 20.0
    assert cfg.seed == 3
    assert cfg.env.compliant.translational_stiffness > 0


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
def test_every_preset_loads(preset):
    load_config(CONFIG_DIR / preset)


def test_unknown_key_in_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"task\.targetpose.*target_pose"):
        load_config(write(tmp_path, "task:\n  targetpose: [0, 0, 0, 0, 0, 0]\n"))


def test_unknown_key_in_override_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"override 'env\.hz=5'.*env\.hz"):
        load_config(write(tmp_path, ""), ["env.hz=5"])


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"env\.control_hz"):
        load_config(write(tmp_path, "env:\n  control_hz: fast\n"))


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(write(tmp_path, ""), ["seed"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_bad_mode_rejected(tmp_path):
    with pytest.raises(ConfigError, match="mode"):
        load_config(write(tmp_path, "mode: simulation\n"))


def test_hash_ignores_seed_and_output_but_not_task(tmp_path):
    path = write(tmp_path, "")
    base = config_hash(load_config(path))
    assert config_hash(load_config(path, ["seed=7", "output_dir=/tmp/x"])) == base
    assert config_hash(load_config(path, [f"task.reset_yaw_noise={math.pi / 4}"])) != base
    # An actor with the classifier on must pass the handshake of a learner without it.
    assert config_hash(load_config(path, ["classifier.enabled=true", "learner.max_steps=5"])) == base
    assert config_hash(load_config(path, ["agent.network.num_critics=4"])) != base
