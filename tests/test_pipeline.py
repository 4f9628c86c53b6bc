"""`franka-rl pipeline` end to end on a tiny profile of the state-only twin: the report, skipping
completed stages, the one-line failure, and no child process left behind (normal exit and Ctrl-C)."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from franka_rl.cli import main
from franka_rl.pipeline import STOP_GRACE_S, PipelineError, load_profile, nearest_checkpoints

TINY_PROFILE = """
description: "tiny: tests"
overrides:
  - env.cameras=[]
  - task.max_episode_steps=40
  - agent.network.critic_hidden_dims=[32,32]
  - agent.network.actor_hidden_dims=[32,32]
  - agent.network.num_critics=2
  - agent.encoder.proprio_dim=0
  - agent.sac.batch_size=32
  - agent.sac.utd=1
  - agent.cql.n_actions=4
  - pretrain.log_every=10
  - pretrain.checkpoint_every=20
  - pretrain.holdout_episodes=1
  - learner.steps_per_transition=0.5
  - transport.heartbeat_interval_s=0.2
  - transport.heartbeat_timeout_s=3
demo_successes: 2
offline_successes: 2
offline_max_episodes: 40
use_classifier: false
pretrain_steps: 20
online_steps: 40
warmup_steps: 20
online_real_time: false
eval_marks: [0, 40]
eval_episodes: 2
checkpoint_interval_s: 1.0
"""

STAGES = ["demos", "offline", "pretrain", "eval_pretrain", "online", "eval_online"]


def children_of_run(out: Path) -> list[psutil.Process]:
    """Processes whose command line names the run's folder (every stage's does)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(str(out) in part for part in process.info["cmdline"] or []):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("profile") / "tiny.yaml"
    path.write_text(TINY_PROFILE)
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, profile):
    out = tmp_path_factory.mktemp("pipeline") / "run"
    code = main(["pipeline", "--profile", str(profile), "--out", str(out), "--quiet"])
    return out, code


def test_runs_end_to_end_and_writes_the_report(finished_run):
    out, code = finished_run
    assert code == 0
    report = out / "report"
    for name in ("results.md", "commands.md", "summary.json", "success_vs_online_steps.png", "calibration.png"):
        assert (report / name).is_file(), name
    summary = json.loads((report / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == STAGES
    assert all(s["outcome"] == "ran" for s in summary["stages"])
    online = next(s for s in summary["stages"] if s["name"] == "online")
    assert online["details"]["online_steps"] >= 40
    # exactly once: the learner stored every step the actor recorded, no more
    assert online["details"]["transitions_stored"] == online["details"]["online_steps"]
    assert len(online["commands"]) == 2 and "--pretrained" in online["commands"][0]
    # every checkpoint kept for the marks, only the latest one's buffer snapshot
    checkpoints = list((out / "online" / "learner" / "checkpoints").glob("[0-9]*"))
    # At least the final one; how many periodic ones (checkpoint_interval_s) fit in depends on the
    # machine's load. Pruning with several is tested in tests/test_faults.py.
    assert len(checkpoints) >= 1
    # Snapshots are incremental: the latest checkpoint's chain of segments is what stays.
    from agent.checkpoint import AgentCheckpointer
    from agent.learner import snapshot_chain

    checkpointer = AgentCheckpointer(out / "online" / "learner" / "checkpoints", max_to_keep=None)
    chain = {s["file"] for s in snapshot_chain(checkpointer.read_meta(checkpointer.latest_step())["extra"])}
    assert online["details"]["pruned_buffer_files"] == len(checkpoints) - len(chain)
    assert {p.name for p in (out / "online" / "learner" / "replay").glob("buffer_*.npz")} == chain
    evals = summary["online"][0]["evals"]
    assert set(evals) == {"0", "40"} and evals["0"]["online_steps"] == 0 and evals["40"]["online_steps"] > 0
    assert summary["pretrain_eval"]["episodes"] == 2

    results = (report / "results.md").read_text()
    assert "| online |" in results and "Cal-QL offline (pre-trained policy): **" in results
    commands = (report / "commands.md").read_text()
    for command in ("franka-rl record-demos", "franka-rl pretrain", "franka-rl learner", "franka-rl actor",
                    "franka-rl eval"):
        assert command in commands
    for stage in STAGES:
        assert (out / "logs" / f"{stage}.log").is_file()
    assert not children_of_run(out)


def test_off2on_pretrains_its_ensemble_and_runs_online_on_balanced_replay(finished_run, profile, tmp_path):
    """`--methods off2on` from the same recorded data: its own pre-training stage (an ensemble of
    CQL agents) and evaluation, the online stage with the offline data for balanced replay, and
    the report's balanced-replay table and plot."""
    import shutil

    source, code = finished_run
    assert code == 0
    out = tmp_path / "run"
    for stage in ("demos", "offline", "pretrain", "eval_pretrain"):  # done: skipped, as a rerun would
        shutil.copytree(source / stage, out / stage)
    # At the robot's 10 Hz and long enough for the learner to compile its step (on a thread, while
    # it stores) and then train: the twin's actor outruns a compile when not paced.
    longer = tmp_path / "longer.yaml"
    longer.write_text(TINY_PROFILE.replace("online_steps: 40", "online_steps: 250")
                      .replace("eval_marks: [0, 40]", "eval_marks: [0, 250]")
                      .replace("online_real_time: false", "online_real_time: true")
                      .replace("checkpoint_interval_s: 1.0", "checkpoint_interval_s: 5.0"))
    assert main(["pipeline", "--profile", str(longer), "--out", str(out), "--methods", "off2on", "--quiet",
                 "agent.off2on.ensemble_size=2"]) == 0
    summary = json.loads((out / "report" / "summary.json").read_text())
    ran = [s["name"] for s in summary["stages"] if s["outcome"] == "ran"]
    assert ran == ["pretrain.off2on", "eval_pretrain.off2on", "online", "eval_online"]
    online = next(s for s in summary["stages"] if s["name"] == "online")
    assert online["details"]["transitions_stored"] == online["details"]["online_steps"] >= 250
    learner, _ = online["commands"]
    assert "--offline-data" in learner and str(out / "pretrain.off2on" / "run" / "checkpoints") in learner
    results = (out / "report" / "results.md").read_text()
    assert "off2on offline (its own pre-trained agent): **" in results
    assert "| off2on s0 |" in results and (out / "report" / "balanced_replay.png").stat().st_size > 5000
    # Mark 0 of Off2On is its own pre-trained ensemble's evaluation, not the Cal-QL one.
    assert summary["online"][0]["evals"]["0"]["episodes"] == 2
    assert not children_of_run(out)


def test_rerun_skips_every_completed_stage(finished_run, profile, capsys):
    out, _ = finished_run
    markers = {stage: (out / stage / "DONE.json").stat().st_mtime_ns for stage in STAGES}
    capsys.readouterr()
    assert main(["pipeline", "--profile", str(profile), "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    for stage in STAGES:
        assert f"[{stage}] done before" in err and "skipped" in err
        assert (out / stage / "DONE.json").stat().st_mtime_ns == markers[stage]
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert all(s["outcome"] == "skipped" for s in summary["stages"])


def test_ctrl_c_leaves_no_process_and_no_marker(finished_run, profile):
    """Ctrl-C of the pipeline during the online stage stops the learner and the actor."""
    out, _ = finished_run
    started = time.time()
    pipeline = subprocess.Popen(
        [sys.executable, "-m", "franka_rl", "pipeline", "--profile", str(profile), "--out", str(out), "--quiet",
         "--force", "online", "--stages", "online", "--set", "online_steps=1000000"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        # a shell's background job (a CI runner, nohup) starts with SIGINT ignored, which the child
        # would inherit; give it the default, as a terminal has
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        episodes = out / "online" / "episodes"

        def new_episodes() -> list[Path]:
            # The forced stage clears its folder first; until then the finished run's episodes are
            # still there, so count only episodes written by this run.
            found = []
            for path in episodes.glob("episode_*.npz"):
                try:
                    if path.stat().st_mtime > started:
                        found.append(path)
                except FileNotFoundError:
                    continue
            return found

        while time.monotonic() < deadline and not new_episodes():
            assert pipeline.poll() is None, pipeline.stdout.read().decode()
            time.sleep(0.5)
        assert new_episodes(), "the actor never finished an episode"
        assert len(children_of_run(out)) >= 2  # learner and actor run
        pipeline.send_signal(signal.SIGINT)
        # worst case: each child's grace (actor, then learner) before it is killed, plus the pipeline's exit
        assert pipeline.wait(timeout=2 * STOP_GRACE_S + 60) == 130
    finally:
        if pipeline.poll() is None:
            pipeline.kill()
    assert not children_of_run(out)
    assert not (out / "online" / "DONE.json").exists()
    # the children stopped before their logs closed: their last lines are there, no write error
    output = pipeline.stdout.read().decode()
    assert "Traceback" not in output, output
    assert "learner stopped after" in (out / "logs" / "online.log").read_text()
    assert "actor-0 stopped:" in (out / "logs" / "online.actor.log").read_text()


def test_failing_stage_names_its_log_in_one_line(tmp_path, profile, capsys):
    out = tmp_path / "run"
    # pretrain alone, without the demos it reads: the command fails
    code = main(["pipeline", "--profile", str(profile), "--out", str(out), "--quiet", "--stages", "pretrain"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("franka-rl pipeline: error: stage 'pretrain' failed (exit code 2)")
    log = out / "logs" / "pretrain.log"
    assert f"log: {log}" in err[-1] and log.is_file()
    assert "franka-rl pretrain" in log.read_text()
    assert not (out / "pretrain" / "DONE.json").exists()
    assert (out / "report" / "results.md").is_file()
    assert not children_of_run(out)


def test_bad_profile_key_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("online_stepz: 10\n")
    assert main(["pipeline", "--profile", str(bad), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "online_stepz" in err[0]
    with pytest.raises(PipelineError, match="available: cpu, full"):
        load_profile("nope")


def test_shipped_profiles_load_and_fit_the_config():
    from franka_rl.config import load_config

    for name in ("cpu", "full"):
        profile = load_profile(name)
        cfg = load_config(None, profile.overrides)
        assert cfg.env.cameras and profile.use_classifier
        assert max(profile.eval_marks) == profile.online_steps
    assert load_config(None, load_profile("full").overrides).agent.network.num_critics == 10


def test_nearest_checkpoint_per_mark():
    transitions = {1: 0, 2: 180, 3: 420, 4: 1010}
    assert nearest_checkpoints(transitions, [0, 200, 1000]) == {0: (1, 0), 200: (2, 180), 1000: (4, 1010)}
    assert nearest_checkpoints({}, [0]) == {}
    # A checkpoint before any online transition is the starting policy: never a later mark's,
    # even when it is the nearest (the learner compiled while the actor ran all its steps).
    assert nearest_checkpoints({1: 0, 2: 105}, [0, 40]) == {0: (1, 0), 40: (2, 105)}
    assert nearest_checkpoints({1: 0}, [0, 40]) == {0: (1, 0), 40: (1, 0)}


def test_compare_table_means_over_seeds(tmp_path):
    """The compare table from the stages' own records: two seeds of one method, 1/2 and 2/2."""
    from franka_rl.pipeline import StageResult
    from franka_rl.pipeline_report import _compare_rows, plot_compare, seed_rates

    runs, results = [], []
    for seed, successes in ((0, 1), (1, 2)):
        eval_dir = tmp_path / f"wsrl_s{seed}" / "eval_online"
        (eval_dir / "checkpoint_3").mkdir(parents=True)
        (eval_dir / "checkpoint_3" / "results.json").write_text(
            json.dumps({"successes": successes, "episodes": 2, "success_rate": successes / 2}))
        marks = {"100": {"checkpoint": 3, "online_steps": 104, "results": str(eval_dir / "checkpoint_3" / "results.json")}}
        (eval_dir / "DONE.json").write_text(json.dumps({"details": {"marks": marks}}))
        runs.append({"method": "wsrl", "seed": seed, "online": f"online.wsrl.s{seed}", "eval_dir": str(eval_dir)})
        results.append(StageResult(f"online.wsrl.s{seed}", "ran", 60.0, [], {"online_steps": 104, "episodes": 3}))
    rows = _compare_rows(runs, [0, 100], results)
    assert rows[-1] == "| wsrl | 2 | – | 75% ± 25% (n=2) | 208 | 6 | 2.0 min |"
    assert seed_rates(runs, "wsrl", 100) == [0.5, 1.0] and seed_rates(runs, "wsrl", 0) == []
    assert seed_rates(runs, "rlpd", 100) == []
    assert plot_compare(runs, [0, 100], tmp_path / "compare.png").stat().st_size > 0


def test_online_commands_per_method(tmp_path, profile):
    """The warm-up goes to the methods whose preset has one; rlpd starts from scratch on the
    offline data; learner and actor get the same agent keys (the handshake compares them)."""
    from franka_rl.pipeline import PipelinePlan, online_stage

    plan = PipelinePlan(out=tmp_path, profile=load_profile(str(profile)))
    stages = {m: online_stage(plan, m, 1, f"online.{m}", tmp_path / m, 5555)
              for m in ("wsrl", "wsrl_nowarmup", "rlpd", "calql_finetune")}
    for method, stage in stages.items():
        learner, actor = stage.commands
        assert learner[learner.index("--preset") + 1] == actor[actor.index("--preset") + 1] == method
        assert [a for a in learner if a.startswith("agent.")] == [a for a in actor if a.startswith("agent.")]
        assert "seed=1" in learner and "seed=1" in actor
        assert ("agent.online.warmup_steps=20" in learner) == (method == "wsrl")
        assert ("--pretrained" in learner) == (method != "rlpd")
        # the methods whose online batches mix in offline data get the episode folders
        assert ("--offline-data" in learner) == (method in ("rlpd", "calql_finetune"))
        assert ("demos" in stage.inputs) == (method in ("rlpd", "calql_finetune"))
        assert ("pretrain" in stage.inputs) == (method != "rlpd")
    # The presets that pre-train their own way start from their own stage's checkpoint.
    from franka_rl.pipeline import own_pretrain_stages

    for method in ("off2on", "wsrl_iql"):
        learner, actor = online_stage(plan, method, 1, f"online.{method}", tmp_path / method, 5555).commands
        assert learner[learner.index("--pretrained") + 1] == str(tmp_path / f"pretrain.{method}" / "run" / "checkpoints")
        pretrain, evaluation = (stage.commands[0] for stage in own_pretrain_stages(plan, method))
        assert pretrain[pretrain.index("--preset") + 1] == evaluation[evaluation.index("--preset") + 1] == method
        assert ("agent.online.warmup_steps=20" in learner) == (method == "wsrl_iql")
        assert ("--offline-data" in learner) == (method == "off2on")


def test_a_stage_that_runs_reruns_what_reads_its_output(tmp_path):
    from franka_rl.pipeline import Runner, Stage

    def stages():
        noop = [[sys.executable, "-c", "pass"]]
        return [Stage("a", tmp_path / "a", noop), Stage("b", tmp_path / "b", noop, inputs=("a",)),
                Stage("c", tmp_path / "c", noop), Stage("d", tmp_path / "d", noop, inputs=("b",))]

    said: list[str] = []
    first = Runner(tmp_path, echo=False, say=said.append)
    for stage in stages():
        first.run(stage)
    assert first.ran == {"a", "b", "c", "d"}

    untouched = Runner(tmp_path, echo=False, say=said.append)
    for stage in stages():
        untouched.run(stage)
    assert untouched.ran == set()

    forced = Runner(tmp_path, force=["a"], echo=False, say=said.append)
    for stage in stages():
        forced.run(stage)
    assert forced.ran == {"a", "b", "d"}  # c reads nothing of a's: kept
    assert any("[b] done before, but a ran again: rerunning" in line for line in said)


def test_demo_is_the_pipeline(tmp_path, profile, capsys):
    """`franka-rl demo` (the README's main command) runs the pipeline's stages and writes its report."""
    out = tmp_path / "demo"
    assert main(["demo", "--profile", str(profile), "--out", str(out), "--stages", "demos", "--quiet"]) == 0
    assert (out / "demos" / "DONE.json").is_file() and not (out / "offline").exists()
    assert "Cal-QL offline" in (out / "report" / "results.md").read_text()
    assert f"report: {out / 'report' / 'results.md'}" in capsys.readouterr().out


def test_demo_expert_preview_writes_video_and_sheet(tmp_path):
    out = tmp_path / "demo"
    code = main(["demo", "--expert-preview", "--episodes", "1", "--video-episodes", "1", "--out", str(out),
                 "env.image_height=32", "env.image_width=32"])
    assert code == 0
    preview = out / "preview"
    summary = json.loads((preview / "summary.json").read_text())
    assert summary["episodes"] == 1 and summary["successes"] == 1
    assert (preview / "wrist_cameras.mp4").stat().st_size > 0 and (preview / "contact_sheet.png").stat().st_size > 0


def test_demo_refuses_preview_options_without_the_preview(tmp_path, capsys):
    assert main(["demo", "--episodes", "3", "--out", str(tmp_path / "demo")]) != 0
    assert "--episodes" in capsys.readouterr().err and not (tmp_path / "demo").exists()


@pytest.mark.parametrize("summary, expected", [
    (None, "left no readable"),
    ({"transitions_stored": 0, "last_checkpoint": None}, "stored 0 and wrote no checkpoint"),
    ({"transitions_stored": 30, "last_checkpoint": 2}, "stored 30 of the 40 steps"),
])
def test_online_stage_fails_loudly_when_the_learner_did_not_store_what_the_actor_recorded(tmp_path, summary, expected):
    from franka_rl.commands.learner import SUMMARY_FILE
    from franka_rl.pipeline import PipelineError, Stage, check_learner_stored

    stage = Stage("online", tmp_path / "online", [[], []], online_steps=40, episodes_dir=tmp_path / "episodes")
    (stage.directory / "learner").mkdir(parents=True)
    if summary is not None:
        (stage.directory / "learner" / SUMMARY_FILE).write_text(json.dumps(summary))
    with pytest.raises(PipelineError, match=expected):
        check_learner_stored(stage, 40, tmp_path / "online.log", tmp_path)
    (stage.directory / "learner" / SUMMARY_FILE).write_text(json.dumps({"transitions_stored": 40, "last_checkpoint": 3}))
    assert check_learner_stored(stage, 40, tmp_path / "online.log", tmp_path) == 40
