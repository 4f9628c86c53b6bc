"""Faults the online processes must survive (issue 15): non-finite learner steps, damaged
checkpoints and buffer snapshots, damaged episode files, and full disks for the learner's
checkpoints and the actor's episodes.

Disk-full tests use a real 2 MiB tmpfs when the tests run as root and `mount` works (the
`small_disk` fixture), and otherwise skip; each also has a variant that simulates ENOSPC by
monkeypatching the low-level write, which always runs."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import gymnasium as gym
import jax
import numpy as np
import pytest
from test_learner import chunk, close_learners, config, deliver, make_learner  # noqa: F401  (an autouse fixture)

from agent.checkpoint import AgentCheckpointer
from agent.data.episodes import EpisodeStore, load_episode
from agent.data.replay_buffer import CorruptBufferError, ReplayBuffer
from agent.data.synthetic import synthetic_episode
from agent.learner import LearnerError
from agent.param_sync import export_acting_params
from agent.returns import RewardShaping
from franka_rl.cli import main


def flip_byte(path: Path, fraction: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * fraction)] ^= 0x5A
    path.write_bytes(bytes(data))


def largest_file(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file() and p.name != "franka_rl_manifest.json"),
               key=lambda p: p.stat().st_size)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def small_disk():
    """A 2 MiB tmpfs (root only); yields its path, unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real small filesystem needs root (mount -t tmpfs); the ENOSPC variant covers this")
    where = Path(tempfile.mkdtemp(prefix="small_disk_"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        where.rmdir()
        pytest.skip(f"mount -t tmpfs failed: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        shutil.rmtree(where, ignore_errors=True)


def fill(disk: Path, leave_bytes: int) -> Path:
    """Fill `disk` until about `leave_bytes` are free."""
    filler = disk / "filler.bin"
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(free - leave_bytes, 0))
    return filler


def learner_with_two_checkpoints(tmp_path, *extra):
    cfg = config(tmp_path, "learner.keep_checkpoints=3", *extra)
    learner = make_learner(cfg)
    assert deliver(learner, "a0/x", 1, chunk(0, 0, 4, end=True))
    assert learner.checkpoint() == 1
    assert deliver(learner, "a0/x", 2, chunk(1, 0, 5, end=True))
    assert learner.checkpoint() == 2
    learner.server.close()
    return cfg, tmp_path / "learner"


def resume(cfg):
    lines: list[str] = []
    resumed = make_learner(cfg, report=lines.append)
    return resumed, lines


# ------------------------------------------------------------------------------ non-finite updates


def nan_learner_step(real):
    """A learner step whose critic loss is NaN (its new agent moved, which must not be kept)."""
    def step(agent, batches):
        new_agent, metrics = real(agent, batches)
        return new_agent, {**metrics, "critic_loss": np.float32(np.nan)}
    return step


def test_a_non_finite_step_is_skipped_params_kept_and_n_in_a_row_stop_pointing_at_the_data(tmp_path, monkeypatch):
    learner = make_learner(config(tmp_path, "learner.max_consecutive_nonfinite_updates=3"))
    assert deliver(learner, "a0/x", 1, chunk(0, 0, 7, end=True))
    assert learner.checkpoint() == 1
    before = export_acting_params(learner.agent)
    monkeypatch.setattr(learner, "learner_step", nan_learner_step(learner.learner_step))
    assert learner.update() is None and learner.update() is None
    assert learner.counters.skipped_nonfinite == 2 and learner.counters.steps == 0
    after = export_acting_params(learner.agent)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert learner.checkpoint() is None  # a poisoned moment is never checkpointed
    with pytest.raises(LearnerError) as stop:
        learner.update()
    message = str(stop.value)
    assert "3 learner steps in a row" in message and "data" in message and "_lr" not in message
    assert "\n" not in message and "a0/x" in message  # names the most recent stream
    assert learner.checkpointer.all_steps() == [1]
    learner.server.close()


def test_an_inf_reward_in_the_buffer_skips_the_step_and_is_set_aside(tmp_path):
    learner = make_learner(config(tmp_path))
    assert deliver(learner, "a0/x", 1, chunk(0, 0, 7, end=True))
    assert deliver(learner, "a0/y", 1, chunk(0, 0, 3, end=True, rewards=[0, np.inf, 0], seed=5))
    before = export_acting_params(learner.agent)
    learner.compile_update()
    assert learner.update() is None  # batches of 8 from 10 transitions hold the inf one
    assert all(np.array_equal(before[k], v) for k, v in export_acting_params(learner.agent).items())
    assert learner.counters.quarantined_episodes == 1 and learner.buffer.num_transitions == 7
    metrics = learner.update()  # the remaining data trains
    assert metrics is not None and np.isfinite(metrics["critic_loss"]) and learner.counters.steps == 1
    assert learner.checkpoint() == 1
    learner.server.close()
    saved = ReplayBuffer.load(tmp_path / "learner" / "replay" / "buffer_000001.npz",
                              shaping=learner.new_buffer.shaping)
    assert np.isfinite(saved.all_transitions()["raw_rewards"]).all()


def test_the_exit_path_writes_no_checkpoint_after_a_non_finite_stop(tmp_path, monkeypatch):
    cfg = config(tmp_path, f"transport.port={free_port()}", "learner.max_consecutive_nonfinite_updates=2",
                 "learner.checkpoint_interval_s=1000")
    learner = make_learner(cfg)
    assert deliver(learner, "a0/x", 1, chunk(0, 0, 7, end=True))
    assert learner.checkpoint() == 1
    good = export_acting_params(learner.agent)
    assert deliver(learner, "a0/x", 2, chunk(1, 0, 3, end=True))  # unsaved: the exit path would save it
    monkeypatch.setattr(learner, "learner_step", nan_learner_step(learner.learner_step))
    with pytest.raises(LearnerError, match="in a row were non-finite"):
        learner.run()
    assert AgentCheckpointer(tmp_path / "learner" / "checkpoints").all_steps() == [1]
    assert sorted(p.name for p in (tmp_path / "learner" / "replay").iterdir()) == ["buffer_000001.npz"]
    monkeypatch.undo()
    resumed = make_learner(config(tmp_path))
    assert all(np.array_equal(good[k], v) for k, v in export_acting_params(resumed.agent).items())
    resumed.server.close()


def test_the_pipeline_prunes_only_buffer_files_the_latest_snapshot_does_not_need(tmp_path):
    from franka_rl.pipeline import prune_old_buffers

    # Small ring: by checkpoint 3 the ring has overwritten every slot of checkpoint 1's segment.
    cfg, run_dir = learner_with_two_checkpoints(tmp_path, "task.max_episode_steps=6", "learner.buffer_capacity=12")
    assert prune_old_buffers(run_dir) == 0  # checkpoint 2's snapshot is segments 1 + 2
    learner, _ = resume(cfg)
    assert deliver(learner, "a0/x", 3, chunk(2, 0, 5, end=True))
    assert learner.checkpoint() == 3
    learner.server.close()
    assert sorted(p.name for p in (run_dir / "replay").iterdir()) == [
        "buffer_000001.npz", "buffer_000002.npz", "buffer_000003.npz"]  # checkpoint 2 still needs segment 1
    assert prune_old_buffers(run_dir) == 1
    assert sorted(p.name for p in (run_dir / "replay").iterdir()) == ["buffer_000002.npz", "buffer_000003.npz"]
    resumed, _ = resume(cfg)  # the kept segments are the ones the latest checkpoint resumes from
    assert resumed.buffer.num_transitions == 10 and resumed.buffer.slots_written == 17
    resumed.server.close()


def test_checkpoints_write_only_what_arrived_since_the_last_and_resume_the_exact_ring(tmp_path):
    cfg = config(tmp_path, "task.max_episode_steps=6", "learner.buffer_capacity=14", "learner.keep_checkpoints=3")
    learner = make_learner(cfg)
    replay = tmp_path / "learner" / "replay"
    sizes, sequence = [], 0
    for episode, steps in enumerate([4, 5, 3, 4]):
        sequence += 1
        assert deliver(learner, "a0/x", sequence, chunk(episode, 0, steps, end=True))
        if episode == 3:
            learner.buffer.invalidate_episodes([1])  # changes old slots in place: the segment carries it
        written_before = learner.buffer.slots_written - (steps + 1)
        index = learner.checkpoint()
        with np.load(replay / f"buffer_{index:06d}.npz") as segment:
            sizes.append(segment["slots"].shape[0])
        assert json.loads(str(np.load(replay / f"buffer_{index:06d}.npz")["header"][()]))["since_written"] == \
            written_before
    assert sizes == [5, 6, 4, 5]  # each checkpoint wrote its own episode's slots, nothing older
    extra = AgentCheckpointer(tmp_path / "learner" / "checkpoints").read_meta(4)["extra"]
    # 20 slots written into a ring of 14: segment 1 (slots 0-4) is overwritten, 2-4 make the ring.
    assert [s["file"] for s in extra["buffer_segments"]] == [
        "buffer_000002.npz", "buffer_000003.npz", "buffer_000004.npz"]
    # Kept checkpoints 2-4 still need segment 1 (checkpoint 2's chain); nothing else is on disk.
    assert sorted(p.name for p in replay.iterdir()) == [f"buffer_00000{i}.npz" for i in range(1, 5)]
    live = learner.buffer
    learner.server.close()
    resumed, _ = resume(cfg)
    back = resumed.buffer
    assert (back.slots_written, back._cursor, back.num_transitions) == (20, live._cursor, live.num_transitions)
    for name in ("_actions", "_raw_rewards", "_terminated", "_truncated", "_mc_returns", "_valid", "_episode_ids"):
        assert np.array_equal(getattr(back, name), getattr(live, name)), name
    assert np.array_equal(back._obs["state"], live._obs["state"])
    resumed.server.close()

    # A damaged middle segment spoils every checkpoint whose chain holds it: back to checkpoint 2.
    flip_byte(replay / "buffer_000003.npz", 0.6)
    fallback, lines = resume(cfg)
    assert fallback.counters.checkpoints == 2 and fallback.buffer.slots_written == 11
    assert any("buffer_000003.npz" in line and "previous checkpoint 2" in line for line in lines)
    fallback.server.close()


# ------------------------------------------------------------------------------ damaged checkpoints


def test_a_bit_flip_in_the_latest_checkpoint_falls_back_to_the_previous_with_one_warning(tmp_path):
    cfg, run_dir = learner_with_two_checkpoints(tmp_path)
    flip_byte(largest_file(run_dir / "checkpoints" / "2"))
    resumed, lines = resume(cfg)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "checkpoint 2" in warnings[0] and "previous checkpoint 1" in warnings[0]
    assert resumed.books["a0/x"].committed_through == 1 and resumed.buffer.num_transitions == 4
    assert resumed.checkpointer.all_steps() == [1] and (run_dir / "corrupt").is_dir()
    assert resumed.checkpoint() == 2  # numbering continues; the damaged step is out of the way
    resumed.server.close()


def test_a_bit_flip_in_the_latest_buffer_snapshot_falls_back_to_the_previous(tmp_path):
    cfg, run_dir = learner_with_two_checkpoints(tmp_path)
    flip_byte(run_dir / "replay" / "buffer_000002.npz", 0.6)
    resumed, lines = resume(cfg)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "buffer_000002.npz" in warnings[0] and "previous checkpoint 1" in warnings[0]
    assert resumed.buffer.num_transitions == 4 and resumed.counters.checkpoints == 1
    resumed.server.close()


def test_both_checkpoints_damaged_is_one_clear_error(tmp_path):
    cfg, run_dir = learner_with_two_checkpoints(tmp_path)
    flip_byte(largest_file(run_dir / "checkpoints" / "2"))
    (run_dir / "replay" / "buffer_000001.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(LearnerError) as error:
        make_learner(cfg)
    message = str(error.value)
    assert "\n" not in message and "no usable checkpoint" in message and "Move" in message
    assert "2:" in message and "1:" in message


def test_a_truncated_or_flipped_buffer_file_is_a_corrupt_buffer_error(tmp_path):
    shaping = RewardShaping(1.0, -1.0, 0.9, True)
    buffer = ReplayBuffer({"state": ((3,), np.float32)}, 2, 20, shaping=shaping)
    buffer.add_episode({"state": np.zeros((4, 3), np.float32)}, np.zeros((3, 2)), np.zeros(3), np.zeros(3),
                       np.zeros(3))
    path = buffer.save(tmp_path / "b.npz")
    from agent.data.replay_buffer import file_sha256

    digest = file_sha256(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated: zipfile.BadZipFile
    with pytest.raises(CorruptBufferError, match="truncated or corrupt"):
        ReplayBuffer.load(path, shaping=shaping)
    buffer.save(path)
    flip_byte(path, 0.3)
    with pytest.raises(CorruptBufferError, match="sha256"):
        ReplayBuffer.load(path, shaping=shaping, expected_sha256=digest)


def test_eval_style_restore_falls_back_and_a_lost_manifest_is_refused(tmp_path, caplog):
    cfg = config(tmp_path).agent
    from agent.core import create_agent

    agent = create_agent(cfg, {"state": np.zeros(19, np.float32)}, 6)
    moved = agent.replace(actor=agent.actor.replace(params=jax.tree.map(lambda x: x + 1, agent.actor.params)))
    checkpointer = AgentCheckpointer(tmp_path / "ck")
    checkpointer.save(1, agent, cfg, {"n": 1})
    checkpointer.save(2, moved, cfg, {"n": 2})
    flip_byte(largest_file(tmp_path / "ck" / "2"))
    with caplog.at_level("WARNING", logger="agent.checkpoint"):
        _, extra = checkpointer.restore(agent)
    assert extra == {"n": 1} and "restored checkpoint 1 instead" in caplog.text
    checkpointer.save(3, moved, cfg, {"n": 3})
    (tmp_path / "ck" / "3" / "franka_rl_manifest.json").unlink()
    from agent.checkpoint import CheckpointCorruptError

    with pytest.raises(CheckpointCorruptError, match="manifest is missing"):
        checkpointer.restore(agent, 3)


# ------------------------------------------------------------------------------ damaged episodes


def test_dataset_info_names_every_bit_flipped_episode(tmp_path, capsys):
    rng = np.random.default_rng(0)
    store = EpisodeStore(tmp_path / "eps", create=True)
    for i in range(10):
        store.write(synthetic_episode(rng, 6, image_size=16, episode_index=i))
    flipped = [p for i, p in enumerate(store.paths()) if i % 5 != 0]  # 8 of 10
    for k, path in enumerate(flipped):
        flip_byte(path, 0.2 + 0.07 * k)  # inside the compressed frames and arrays
    assert main(["dataset", "info", str(tmp_path / "eps"), "--no-sheet"]) == 0
    out, err = capsys.readouterr()
    assert "episodes           2" in out
    skipped = next(line for line in out.splitlines() if line.startswith("SKIPPED"))
    assert all(path.name in skipped for path in flipped)


def test_an_array_changed_behind_a_valid_zip_fails_its_content_checksum(tmp_path):
    rng = np.random.default_rng(1)
    store = EpisodeStore(tmp_path / "eps", create=True)
    path = store.write(synthetic_episode(rng, 4, cameras=(), episode_index=0))
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["rewards"] = arrays["rewards"] + 1.0  # a valid zip with consistent CRCs, wrong content
    np.savez_compressed(path, **arrays)
    from agent.data.episodes import CorruptEpisodeError

    with pytest.raises(CorruptEpisodeError, match="content_sha256"):
        load_episode(path)


# ------------------------------------------------------------------------------ full disks: learner


def assert_no_temporaries(run_dir: Path) -> None:
    leftovers = [p for p in run_dir.rglob("*") if ".tmp" in p.name or "orbax-checkpoint-tmp" in p.name]
    assert leftovers == []


def test_learner_checkpoint_on_a_full_tmpfs_warns_keeps_training_and_keeps_the_good_one(tmp_path, small_disk):
    cfg = config(small_disk, "learner.checkpoint_retry_s=0.01")
    learner = make_learner(cfg)
    lines: list[str] = []
    learner.report = lines.append
    assert deliver(learner, "a0/x", 1, chunk(0, 0, 7, end=True))
    assert learner.try_checkpoint() == 1
    filler = fill(small_disk, 16 * 1024)
    assert deliver(learner, "a0/x", 2, chunk(1, 0, 5, end=True))
    learner.compile_update()
    assert learner.update() is not None  # training goes on
    assert learner.try_checkpoint() is None
    lines = [line for line in lines if "compil" not in line]  # the compile announcements are not about the disk
    assert len(lines) == 1 and "warning:" in lines[0] and "bytes free" in lines[0]
    assert str(small_disk / "learner") in lines[0] and "next try" in lines[0]
    assert_no_temporaries(small_disk / "learner")
    assert learner.checkpointer.all_steps() == [1] and learner.checkpointer.verify(1)
    filler.unlink()
    assert learner.try_checkpoint() == 2  # the retry succeeds once there is room
    learner.server.close()


def test_learner_checkpoint_under_simulated_enospc_keeps_the_previous_and_leaves_no_temp(tmp_path, monkeypatch):
    learner = make_learner(config(tmp_path))
    lines: list[str] = []
    learner.report = lines.append
    assert deliver(learner, "a0/x", 1, chunk(0, 0, 7, end=True))
    assert learner.try_checkpoint() == 1

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    assert deliver(learner, "a0/x", 2, chunk(1, 0, 5, end=True))
    import agent.data.replay_buffer as replay_module

    with monkeypatch.context() as patch:  # the buffer snapshot fails
        patch.setattr(replay_module.np, "savez", no_space)
        assert learner.try_checkpoint() is None
    assert_no_temporaries(tmp_path / "learner")  # (a later save of the same name would hide one)
    original = learner.checkpointer._manager.save
    with monkeypatch.context() as patch:  # the orbax step fails after the buffer was written
        patch.setattr(learner.checkpointer._manager, "save",
                      lambda step, *a, **k: (original(step, *a, **k), no_space())[1])
        assert learner.try_checkpoint() is None
    assert len(lines) == 2 and all("No space left on device" in line and "bytes free" in line for line in lines)
    assert_no_temporaries(tmp_path / "learner")
    assert learner.checkpointer.all_steps() == [1]
    assert sorted(p.name for p in (tmp_path / "learner" / "replay").iterdir()) == ["buffer_000001.npz"]
    learner.server.close()
    resumed = make_learner(config(tmp_path))
    assert resumed.counters.checkpoints == 1 and resumed.buffer.num_transitions == 7
    resumed.server.close()


# ------------------------------------------------------------------------------ full disks: actor


class CountingEnv(gym.Env):
    """A state-only env of fixed-length episodes that counts its steps."""

    def __init__(self, steps: int = 4):
        self.observation_space = gym.spaces.Dict({"state": gym.spaces.Box(-1, 1, (19,), np.float32)})
        self.action_space = gym.spaces.Box(-1, 1, (6,), np.float32)
        self.length, self.t, self.total_steps = steps, 0, 0

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return {"state": np.zeros(19, np.float32)}, {}

    def step(self, action):
        self.t += 1
        self.total_steps += 1
        return {"state": np.full(19, self.t / 10, np.float32)}, 0.0, False, self.t >= self.length, {}


class RecordingClient:
    """The actor's transport as far as one episode needs it: numbers and counts what is sent."""

    learner_warmup = False
    incarnation = "recording"

    def __init__(self):
        self.steps_sent = 0
        self.last_sequence = 0

    def send(self, chunk):
        self.steps_sent += len(chunk)
        self.last_sequence += 1
        return self.last_sequence

    def latest_params(self):
        return None


def make_actor(tmp_path, episodes_dir):
    from agent.actor import Actor
    from franka_rl.assemble import build_agent

    cfg = config(tmp_path)
    env = CountingEnv()
    actor = Actor(env, build_agent(cfg, env), cfg.actor, cfg.transport, config_hash="h", episodes_dir=episodes_dir,
                  episode_metadata={"task": "peg_insertion"}, report=lambda message: None)
    actor.client.close()  # never started; closed so its ZeroMQ context does not hang the exit
    actor.client = RecordingClient()
    return actor, env


def run_episodes_until_the_disk_refuses(actor, env):
    from agent.actor import EpisodeWriteError
    from teleop.recording import RateMeter

    rate = RateMeter(actor.clock)
    actor._episode(rate, None)
    actor._episode(rate, None)
    written = {p.name: p.read_bytes() for p in actor.store.paths()}
    return rate, written, EpisodeWriteError


def test_actor_on_a_full_tmpfs_stops_in_one_line_and_keeps_every_written_episode(tmp_path, small_disk):
    actor, env = make_actor(tmp_path, small_disk / "episodes")
    rate, written, EpisodeWriteError = run_episodes_until_the_disk_refuses(actor, env)
    fill(small_disk, 0)
    with pytest.raises(EpisodeWriteError) as error:
        actor._episode(rate, None)
    message = str(error.value)
    assert "\n" not in message and "No space left on device" in message and "bytes free" in message
    assert "2 episode(s) written before are intact" in message
    assert actor._stop.is_set() and env.total_steps == 12 and actor.client.steps_sent == 12
    assert {p.name: p.read_bytes() for p in actor.store.paths()} == written
    assert [len(load_episode(p)) for p in actor.store.paths()] == [4, 4]
    assert actor.store.incomplete_writes() == []


def test_actor_under_simulated_enospc_stops_in_one_line_and_keeps_every_written_episode(tmp_path, monkeypatch):
    actor, env = make_actor(tmp_path, tmp_path / "episodes")
    rate, written, EpisodeWriteError = run_episodes_until_the_disk_refuses(actor, env)
    import agent.data.episodes as episodes_module

    def no_space(handle, **arrays):
        handle.write(b"PK partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(episodes_module.np, "savez_compressed", no_space)
    with pytest.raises(EpisodeWriteError, match="No space left on device"):
        actor._episode(rate, None)
    monkeypatch.undo()
    assert env.total_steps == 12 and actor.client.steps_sent == 12
    assert {p.name: p.read_bytes() for p in actor.store.paths()} == written
    assert actor.store.incomplete_writes() == []


def test_an_unwritable_episode_folder_is_refused_before_the_arm_moves(tmp_path):
    from agent.actor import EpisodeWriteError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(EpisodeWriteError, match="cannot write episodes"):
        make_actor(tmp_path, blocker / "episodes")
