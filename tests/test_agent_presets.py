"""Agent presets (configs/agents/*.yaml): each loads, changes what it says, and sits between the
config file and the command-line overrides."""

import pytest

from franka_rl.cli import main
from franka_rl.config import AGENT_PRESET_DIR, ConfigError, agent_presets, load_config


def test_every_preset_is_listed_and_loads():
    assert set(agent_presets()) >= {"wsrl", "rlpd", "calql_finetune", "wsrl_nowarmup", "cql", "wsrl_iql"}
    for name in agent_presets():
        cfg = load_config(preset=name)
        assert cfg.agent_preset == name


def test_presets_set_what_the_recipes_need():
    wsrl = load_config(preset="wsrl").agent
    assert wsrl.cql.enabled and wsrl.cql.calql_bound and wsrl.cql.alpha == 5.0
    assert not wsrl.online.keep_cql and wsrl.online.warmup_steps == 5000 and wsrl.online.offline_ratio == 0.0
    assert load_config(preset="wsrl_nowarmup").agent.online.warmup_steps == 0
    cql = load_config(preset="cql").agent
    assert cql.cql.enabled and not cql.cql.calql_bound
    rlpd = load_config(preset="rlpd").agent
    assert not rlpd.cql.enabled and rlpd.online.offline_ratio == 0.5 and rlpd.online.warmup_steps == 0
    iql = load_config(preset="wsrl_iql").agent  # WSRL from an IQL initialisation: online as wsrl
    assert iql.iql.enabled and not iql.cql.enabled and (iql.iql.expectile, iql.iql.temperature) == (0.7, 0.5)
    assert not iql.online.keep_cql and iql.online.warmup_steps == 5000 and iql.online.offline_ratio == 0.0
    assert not wsrl.iql.enabled and not cql.iql.enabled  # the other presets leave IQL off
    finetune = load_config(preset="calql_finetune").agent
    assert finetune.online.keep_cql and finetune.online.cql_alpha == 0.5 and finetune.online.offline_ratio == -1.0


def test_preset_applies_over_the_file_and_under_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("agent:\n  cql:\n    alpha: 1.0\n    n_actions: 3\n  online:\n    warmup_steps: 17\n")
    cfg = load_config(path, preset="wsrl")
    assert cfg.agent.cql.alpha == 5.0  # the preset wins over the file
    assert cfg.agent.cql.n_actions == 3  # what the preset leaves alone stays
    cfg = load_config(path, ["agent.online.warmup_steps=9"], preset="wsrl")
    assert cfg.agent.online.warmup_steps == 9  # an override wins over the preset


def test_preset_from_the_agent_preset_key_and_the_default(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("agent_preset: rlpd\n")
    assert load_config(path).agent.online.offline_ratio == 0.5
    assert load_config(path, ["agent_preset=cql"]).agent_preset == "cql"
    assert load_config(path, preset="wsrl").agent_preset == "wsrl"  # the argument wins
    assert load_config(default_preset="wsrl").agent_preset == "wsrl"
    assert load_config().agent_preset == "" and not load_config().agent.cql.enabled


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError) as info:
        load_config(preset="sacc")
    message = str(info.value)
    assert "sacc" in message and "wsrl" in message and "rlpd" in message and "\n" not in message


def test_bad_key_in_a_preset_is_named(tmp_path, monkeypatch):
    import franka_rl.config as config_module

    (tmp_path / "broken.yaml").write_text("agent:\n  cql:\n    alpah: 5.0\n")
    (tmp_path / "stray.yaml").write_text("seed: 3\n")
    monkeypatch.setattr(config_module, "AGENT_PRESET_DIR", tmp_path)
    with pytest.raises(ConfigError, match="alpah"):
        load_config(preset="broken")
    with pytest.raises(ConfigError, match="only set 'agent:'"):
        load_config(preset="stray")


def test_cli_preset_flag(capsys):
    assert main(["show-config", "--preset", "cql"]) == 0
    out = capsys.readouterr().out
    assert "agent_preset: cql" in out and "calql_bound: false" in out
    assert main(["show-config", "--preset", "wsrl_iql"]) == 0
    assert "agent_preset: wsrl_iql" in capsys.readouterr().out
    assert main(["show-config", "--preset", "cql", "agent.cql.calql_bound=true"]) == 0
    assert "calql_bound: true" in capsys.readouterr().out
    assert main(["show-config", "--preset", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown agent preset 'nope'" in err and len(err.strip().splitlines()) == 1


def test_preset_files_are_partial_agent_trees():
    for path in AGENT_PRESET_DIR.glob("*.yaml"):
        text = path.read_text()
        assert text.lstrip().startswith("#"), f"{path.name} should say what it is in a comment"
