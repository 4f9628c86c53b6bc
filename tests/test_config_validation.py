"""Bad config values stop `load_config` with one ConfigError line that names the key, and the CLI
prints that line (exit 2, no traceback). The repo's own configs, presets and profiles still load."""

import subprocess
import sys

import pytest

from franka_rl.cli import main
from franka_rl.config import CONFIG_DIR, REPO_ROOT, ConfigError, agent_presets, load_config
from franka_rl.pipeline import load_profile, profiles

# (override, text the one-line error must contain: the key, and for some the rule).
BAD_OVERRIDES = [
    ("env.control_hz=0", "env.control_hz must be > 0"),
    ("env.control_hz=-10", "env.control_hz"),
    ("env.control_hz=inf", "env.control_hz must be a finite number"),
    ("task.position_low=[0.7,-0.08,0.075]", "task.position_low must be < task.position_high"),
    ("task.position_high=[0.63,0.08,0.075]", "task.position_low must be < task.position_high"),
    ("task.rotation_high=[0.15,-0.2,0.6]", "task.rotation_low must be < task.rotation_high"),
    ("task.rotation_low=[-2,-0.15,-0.6]", "task.rotation_low must lie within"),
    ("env.image_height=0", "env.image_height must be >= 1"),
    ("env.image_width=-3", "env.image_width must be >= 1"),
    ("agent.sac.actor_lr=-1", "agent.sac.actor_lr"),
    ("agent.sac.critic_lr=nan", "agent.sac.critic_lr"),
    ("agent.sac.temperature_lr=0", "agent.sac.temperature_lr"),
    ("agent.cql.alpha_lr=-0.1", "agent.cql.alpha_lr"),
    ("task.action_scale_translation=-1", "task.action_scale_translation must be > 0"),
    ("task.action_scale_rotation=0", "task.action_scale_rotation must be > 0"),
    ("task.max_episode_steps=0", "task.max_episode_steps must be >= 1"),
    ("learner.buffer_capacity=100", "learner.buffer_capacity (100) must be >= task.max_episode_steps + 1"),
    ("task.target_pose=[0.55,0,0.085]", "task.target_pose must have 6 values"),
    ("task.success_position_tolerance=0", "task.success_position_tolerance"),
    ("env.history_horizon=0", "env.history_horizon"),
    ("env.action_frame=world", "env.action_frame"),
    ("env.state_frame=base", "env.state_frame"),
    ("env.cameras=[wrist_1,wrist_1]", "env.cameras"),
    ("env.compliant.translational_stiffness=-1", "env.compliant.translational_stiffness"),
    ("env.max_observation_age_s=0", "env.max_observation_age_s"),
    ("sim.physics_dt=0.01", "sim.physics_dt"),
    ("sim.friction=nan", "sim.friction"),
    ("sim.success_depth=0.05", "sim.success_depth"),
    ("sim.render_backend=vulkan", "sim.render_backend"),
    ("real.relative_dynamics_factor=2", "real.relative_dynamics_factor"),
    ("real.cameras=[{name: wrist_1, fps: 0}]", "real.cameras[0].fps"),
    ("real.cameras=[{name: wrist_1, stall_timeout_s: 0}]", "real.cameras[0].stall_timeout_s must be > 0"),
    ("agent.network.critic_hidden_dims=[]", "agent.network.critic_hidden_dims"),
    ("agent.encoder.image_dropout=1", "agent.encoder.image_dropout"),
    ("agent.sac.discount=1", "agent.sac.discount"),
    ("pretrain.steps=0", "pretrain.steps must be >= 1"),
    ("eval.episodes=0", "eval.episodes"),
    ("eval.spread=grid", "eval.spread"),
    ("teleop.dead_zone=1.5", "teleop.dead_zone"),
    ("teleop.axis_map=[0,0,1,2,3,4]", "teleop.axis_map"),
    ("record.num_successes=0", "record.num_successes"),
    ("transport.port=70000", "transport.port"),
    ("actor.send_every_steps=0", "actor.send_every_steps"),
    ("learner.publish_every_steps=0", "learner.publish_every_steps"),
    ("classifier.learning_rate=-1", "classifier.learning_rate"),
    ("classifier.validation_fraction=1", "classifier.validation_fraction"),
    ("seed=-1", "seed must be >= 0"),
    ("env.cameras=[wrist_1", "override 'env.cameras=[wrist_1': the value is not valid YAML"),
    ("real.cameras.0.fps=0", "give the whole list (real.cameras=[...])"),
]

# (file text, text the error must contain: the file's line and the key or the YAML problem).
BAD_FILES = [
    ("env:\n  control_hz: 10\n  control_hz: 20\n", "line 3: duplicate key 'env.control_hz' (first set on line 2)"),
    ("env:\n  control_hz: 10\nseed: 1\nenv:\n  image_height: 64\n", "line 4: duplicate key 'env' (first set on line 1)"),
    ("real:\n  cameras:\n    - name: a\n      name: b\n", "line 4: duplicate key 'real.cameras[0].name'"),
    ("env:\n  control_hz: [10\n", "line 3, column 1: malformed YAML: did not find expected ',' or ']'"),
    ("env:\n  control_hz: 10\n image_height: 3\n", "line 3, column 2: malformed YAML"),
    ("seed: 1\n\tenv: 2\n", "line 2, column 1: malformed YAML"),
    ("- 1\n- 2\n", "a config file is a mapping of sections"),
    ("task:\n  max_episode_steps: 0\n", "task.max_episode_steps must be >= 1"),
]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("override, expected", BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_bad_override_is_one_line_naming_the_key(override, expected, capsys):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert expected in message and "\n" not in message
    assert main(["show-config", override]) == 2
    assert _one_error_line(capsys) == f"franka-rl show-config: error: {message}"


@pytest.mark.parametrize("text, expected", BAD_FILES, ids=range(len(BAD_FILES)))
def test_bad_file_is_one_line_naming_the_file_and_line(text, expected, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert expected in message and "\n" not in message
    if "mapping of sections" not in expected and "max_episode_steps" not in expected:
        assert message.startswith(f"{path}, line ")
    assert main(["show-config", "--config", str(path)]) == 2
    assert _one_error_line(capsys).endswith(message)


@pytest.mark.parametrize("args", [["agent.sac.critic_lr=nan"], ["--config", "DUP"]])
def test_the_installed_entry_point_prints_one_line(args, tmp_path):
    """`python -m franka_rl` itself: its __main__ must route errors through the same handler."""
    dup = tmp_path / "dup.yaml"
    dup.write_text("seed: 1\nseed: 2\n")
    args = [str(dup) if a == "DUP" else a for a in args]
    done = subprocess.run([sys.executable, "-m", "franka_rl", "show-config", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert ("agent.sac.critic_lr" if "nan" in args[0] else "duplicate key 'seed'") in done.stderr


def test_values_the_repo_uses_still_load():
    """Every config file × every agent preset, and every pipeline profile's overrides."""
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        for preset in ["", *agent_presets()]:
            load_config(path, preset=preset or None)
    for name in profiles():
        load_config(None, list(load_profile(name).overrides))
    # Boundaries the rules allow: the smallest sizes, a buffer exactly one episode long, a
    # state-only env, an episode-relative state frame.
    cfg = load_config(None, ["env.image_height=1", "env.image_width=1", "env.cameras=[]", "task.max_episode_steps=1",
                             "learner.buffer_capacity=2", "env.state_frame=episode_reset", "pretrain.buffer_capacity=0",
                             "agent.encoder.proprio_dim=0", "agent.online.offline_ratio=-1", "classifier.threshold=0.7"])
    assert cfg.learner.buffer_capacity == cfg.task.max_episode_steps + 1


def test_the_twins_keyword_overrides_are_checked_too():
    import sim

    with pytest.raises(ConfigError, match="env.control_hz must be > 0"):
        sim.make_env(state_only=True, control_hz=0)
    with pytest.raises(ConfigError, match="task.position_low must be < task.position_high"):
        sim.make_env(state_only=True, position_low=[0.7, -0.08, 0.075])
