"""`metrics.wandb`: the config section, its validation, the optional import, a real offline run's
files, and the section reaching the writer of every command that writes metrics."""

from __future__ import annotations

import io
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from agent.metrics import MetricsWriter, WandbConfig, WandbMissingError
from franka_rl.cli import main
from franka_rl.config import load_config
from robot_env.errors import ConfigError, UserError

STATE_ONLY = ["env.cameras=[]", "task.max_episode_steps=10", "agent.network.critic_hidden_dims=[16,16]",
              "agent.network.actor_hidden_dims=[16,16]", "agent.network.num_critics=2", "agent.encoder.proprio_dim=0",
              "agent.sac.batch_size=8", "agent.cql.n_actions=2"]


def test_the_section_defaults_to_disabled_and_validates_its_mode():
    cfg = load_config()
    assert (cfg.metrics.wandb.mode, cfg.metrics.wandb.project, cfg.metrics.wandb.entity) == ("disabled", "franka-rl", "")
    cfg = load_config(None, ["metrics.wandb.mode=offline", "metrics.wandb.project=peg", "metrics.wandb.entity=lab"])
    assert (cfg.metrics.wandb.mode, cfg.metrics.wandb.project, cfg.metrics.wandb.entity) == ("offline", "peg", "lab")
    with pytest.raises(ConfigError, match=r"metrics.wandb.mode must be one of \('disabled', 'online', 'offline'\)"):
        load_config(None, ["metrics.wandb.mode=cloud"])
    with pytest.raises(ConfigError, match="metrics.wandb.project"):
        load_config(None, ["metrics.wandb.mode=online", "metrics.wandb.project="])
    with pytest.raises(ConfigError, match="metrics.wandb.nope"):
        load_config(None, ["metrics.wandb.nope=1"])


def test_disabled_never_imports_wandb(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    with MetricsWriter(tmp_path, tensorboard=False, wandb=WandbConfig()) as writer:
        writer.log(1, {"x": 1.0})
    assert not (tmp_path / "wandb").exists()


def test_a_missing_wandb_is_one_line_naming_pip_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(WandbMissingError, match="pip install wandb"):
        MetricsWriter(tmp_path / "direct", wandb=WandbConfig(mode="offline"))
    assert issubclass(WandbMissingError, UserError)
    code = main(["train-gym", "--env", "Pendulum-v1", "--steps", "10", "--random-steps", "5", "--no-progress",
                 "--out", str(tmp_path / "gym"), "metrics.wandb.mode=offline"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err
    assert "metrics.wandb.mode=offline needs wandb, which is not installed: pip install wandb" in err


def _wandb_records(path: Path):
    """The records of a `.wandb` file: wandb's LevelDB-style log (7-byte file header, 32 KiB blocks,
    records framed as crc32, length, type) of protobuf `Record`s."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, pending = 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 0 and length == 0:
            continue
        pending += chunk
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def test_offline_mode_writes_wandbs_files_with_the_logged_keys(tmp_path):
    pytest.importorskip("wandb")
    run_dir = tmp_path / "run"
    with MetricsWriter(run_dir, wandb=WandbConfig(mode="offline", project="peg"), config={"seed": 3},
                       job_type="pretrain") as writer:
        writer.log(1, {"critic_loss": 0.5, "diverged": float("nan")}, prefix="pretrain")
        writer.log(2, {"critic_loss": 0.25}, prefix="pretrain")
    assert (run_dir / "metrics.jsonl").is_file() and (run_dir / "tensorboard").is_dir()
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (log,) = offline.glob("run-*.wandb")
    records = list(_wandb_records(log))
    assert records[-1].WhichOneof("record_type") == "exit"  # complete when the writer has closed
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.project, run.job_type) == ("peg", "pretrain")
    assert {_key(item): item.value_json for item in run.config.update}["seed"] == "3"
    history = [{_key(item): item.value_json for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [(h["_step"], h["pretrain/critic_loss"]) for h in history] == [("1", "0.5"), ("2", "0.25")]
    assert all("pretrain/diverged" not in h for h in history)  # non-finite: left out, as in TensorBoard


def test_the_adapter_logs_rows_and_waits_for_wandb_on_close(tmp_path, monkeypatch):
    """Against a stand-in module: what is sent, and that close() finishes the run and then tears
    wandb's service down (finish() alone returns before the offline files are written)."""
    events: list = []

    class Run:
        def log(self, values, step):
            events.append(("log", step, values))

        def finish(self):
            events.append(("finish",))

    module = types.ModuleType("wandb")
    module.init = lambda **kwargs: events.append(("init", kwargs)) or Run()
    module.teardown = lambda: events.append(("teardown",))
    monkeypatch.setitem(sys.modules, "wandb", module)
    writer = MetricsWriter(tmp_path, tensorboard=False, wandb=WandbConfig(mode="online", project="p", entity="e"),
                           config={"seed": 1}, job_type="learner")
    writer.log(7, {"loss": 0.5, "bad": float("inf")}, prefix="train")
    writer.close()
    writer.close()  # a second close does nothing
    init = events[0][1]
    assert (init["mode"], init["project"], init["entity"], init["job_type"], init["config"]) == \
        ("online", "p", "e", "learner", {"seed": 1})
    assert events[1:] == [("log", 7, {"train/loss": 0.5}), ("finish",), ("teardown",)]


# -------------------------------------------------------- the section reaches every command


class _Reached(UserError):
    pass


@pytest.fixture
def fake_wandb(monkeypatch):
    """A `wandb` module whose init records its arguments and stops the command right there."""
    calls: list[dict] = []
    module = types.ModuleType("wandb")

    def init(**kwargs):
        calls.append(kwargs)
        raise _Reached(f"wandb.init reached for {kwargs.get('job_type')}")

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


@pytest.fixture(scope="module")
def state_episodes(tmp_path_factory):
    import sim
    from agent.data.episodes import EpisodeStore
    from agent.data.sim_expert import expert_episodes

    directory = tmp_path_factory.mktemp("episodes")
    store = EpisodeStore(directory, create=True)
    env = sim.make_state_env(max_episode_steps=10)
    for episode in expert_episodes(env, 3, noise=0.2, seed=0):
        store.write(episode)
    env.close()
    return directory


def _reward_frames(directory: Path) -> Path:
    import sim
    from agent.data import EpisodeStore
    from teleop.recording import StatusLine, record_reward_frames
    from teleop.scripted import ExpertDevice

    env = sim.make_env(**{"env.image_height": 32, "env.image_width": 32})
    try:
        record_reward_frames(env, ExpertDevice(env, noise=0.1), EpisodeStore(directory, create=True),
                             positives=6, negatives=6, metadata={"task": "peg_insertion"},
                             status=StatusLine(stream=io.StringIO()))
    finally:
        env.close()
    return directory


WANDB = ["metrics.wandb.mode=offline", "metrics.wandb.project=peg-test", "metrics.wandb.entity=lab"]


@pytest.mark.parametrize("command", ["pretrain", "learner", "train-gym", "train-classifier"])
def test_every_metrics_command_hands_metrics_wandb_to_its_writer(command, fake_wandb, state_episodes, tmp_path,
                                                                capsys):
    out = tmp_path / "run"
    argv = {
        "pretrain": ["pretrain", "--data", str(state_episodes), "--out", str(out), "--no-progress",
                     *STATE_ONLY, "pretrain.steps=5", "pretrain.holdout_episodes=1"],
        "learner": ["learner", *STATE_ONLY, f"learner.run_dir={out}"],
        "train-gym": ["train-gym", "--env", "Pendulum-v1", "--steps", "10", "--random-steps", "5",
                      "--no-progress", "--out", str(out), "agent.network.num_critics=2"],
        "train-classifier": ["train-classifier", "--data", str(_reward_frames(tmp_path / "frames")) if
                             command == "train-classifier" else "", "--out", str(out), "--quiet",
                             "env.image_height=32", "env.image_width=32", "classifier.steps=2"],
    }[command]
    assert main([*argv, *WANDB]) == 2
    assert f"wandb.init reached for {command}" in capsys.readouterr().err
    (call,) = fake_wandb
    assert (call["mode"], call["project"], call["entity"], call["job_type"]) == ("offline", "peg-test", "lab", command)
    assert Path(call["dir"]) == out
    assert call["config"]["metrics"]["wandb"]["mode"] == "offline" and "agent" in call["config"]
    assert np.isfinite(call["config"]["seed"])
