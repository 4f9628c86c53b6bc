"""The whole recipe in the twin, stage by stage, each stage a subprocess of the real command.

    demos -> offline -> rewards -> classifier -> pretrain -> eval_pretrain -> online -> eval_online -> report

Every stage writes its outputs under `<out>/<stage>/` and, last, `<out>/<stage>/DONE.json` with the
commands it ran and its wall time; a stage whose marker exists is skipped. Because the stages are
the user-facing commands (`python -m franka_rl <command> ...`), `report/commands.md` lists exactly
what ran, ready to repeat by hand. docs/pipeline.md describes stages, profiles and costs.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from franka_rl.config import CONFIG_DIR
from robot_env.errors import UserError

PROFILE_DIR = CONFIG_DIR / "pipeline"
DONE_FILE = "DONE.json"
#: Methods of `--compare`: every one runs the online stage from the same stage 1-3 outputs.
COMPARE_METHODS = ("wsrl", "rlpd", "calql_finetune", "wsrl_nowarmup")
#: Presets whose learner starts from the Cal-QL checkpoint (rlpd starts from scratch).
PRETRAINED_PRESETS = ("wsrl", "calql_finetune", "wsrl_nowarmup", "cql")
#: Presets that pre-train in their own way (`franka-rl pretrain --preset NAME`) in stages
#: `pretrain.<name>` and `eval_pretrain.<name>`, run only when the method is asked for: Off2On's
#: ensemble of CQL agents, and WSRL's IQL initialisation.
OWN_PRETRAIN_PRESETS = ("off2on", "wsrl_iql")
#: Every stage, in order. A compared run's online stages are `online.<method>.s<seed>` and
#: `eval_online.<method>.s<seed>`; `--stages online` selects all of them.
STAGE_NAMES = ("demos", "offline", "rewards", "classifier", "pretrain", "eval_pretrain", "online", "eval_online")
#: Seconds a child gets to stop after SIGINT before it is killed.
STOP_GRACE_S = 60.0


@dataclass
class PipelineProfile:
    """One file in configs/pipeline/: how big every stage is."""

    description: str = ""
    # Config overrides given to every stage (env, agent, pretrain, learner keys).
    overrides: list[str] = field(default_factory=list)
    # Stage 1: expert demos, then the mixed-quality offline dataset (noisier expert, failures kept).
    demo_successes: int = 20
    demo_noise: float = 0.1
    offline_successes: int = 130
    offline_noise: float = 0.2
    offline_max_episodes: int = 600
    # Stage 2: the reward classifier; false = the twin's ground-truth reward online (no cameras).
    use_classifier: bool = True
    reward_positives: int = 200
    reward_negatives: int = 500
    # Stage 3 and 4.
    pretrain_steps: int = 200_000
    online_steps: int = 8000
    # WSRL warm-up (agent.online.warmup_steps) of the methods whose preset has one (wsrl, cql);
    # the others (rlpd, calql_finetune, wsrl_nowarmup) keep their preset's 0.
    warmup_steps: int = 5000
    # Stage 5: evaluate the learner's checkpoint nearest each of these online-step counts.
    eval_marks: list[int] = field(default_factory=lambda: [0, 2000, 4000, 6000, 8000])
    eval_episodes: int = 20
    # The online actor runs the twin at env.control_hz in wall-clock time, as the arm would, so the
    # learner does as many updates per env step as it would on the robot (false: as fast as it can).
    online_real_time: bool = True
    # The learner checkpoints at least this often, so there is one near every mark.
    checkpoint_interval_s: float = 60.0
    # Extra overrides per stage command: demos, offline, rewards, classifier, pretrain, learner,
    # actor, eval.
    stage_overrides: dict[str, list[str]] = field(default_factory=dict)


class PipelineError(UserError, RuntimeError):
    """A stage failed or the inputs are wrong; the message is one line with what to do."""


def profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name_or_path: str, overrides: Sequence[str] = ()) -> PipelineProfile:
    """A profile by name (configs/pipeline/<name>.yaml) or path, with `key=value` overrides."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise PipelineError(f"unknown pipeline profile '{name_or_path}'; available: {', '.join(profiles())} "
                            f"(files in {PROFILE_DIR}) or a path to a YAML file")
    try:
        tree = OmegaConf.merge(OmegaConf.structured(PipelineProfile), OmegaConf.load(path))
        for item in overrides:
            tree = OmegaConf.merge(tree, OmegaConf.from_dotlist([item]))
        profile: PipelineProfile = OmegaConf.to_object(tree)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise PipelineError(f"{path}: bad profile key '{key}': {str(exc).splitlines()[0]}") from None
    if profile.online_steps < 1 or profile.eval_episodes < 1 or profile.pretrain_steps < 1:
        raise PipelineError(f"{path}: online_steps, eval_episodes and pretrain_steps must be >= 1")
    return profile


# ----------------------------------------------------------------------------- stages


def check_stage_selectors(selectors: Sequence[str], option: str) -> None:
    """Refuse a name in --stages/--force that selects no stage (a typo would otherwise run nothing,
    or everything, and exit 0)."""
    for selector in selectors:
        if not any(selector == name or selector.startswith(name + ".") for name in STAGE_NAMES):
            raise PipelineError(f"{option}: unknown stage '{selector}'; the stages are {', '.join(STAGE_NAMES)} "
                                "(a compared run's own: online.<method>.s<seed>, eval_online.<method>.s<seed>)")



@dataclass
class Stage:
    """One step of the pipeline. `commands` run one after another; an online stage runs
    `commands[0]` (the learner) and `commands[1]` (the actor) together until `online_steps`."""

    name: str
    directory: Path
    commands: list[list[str]]
    online_steps: int = 0  # > 0: an online stage
    episodes_dir: Path | None = None
    # The command continues from what an interrupted run left (pretrain resumes from its latest
    # checkpoint); every other stage starts from an empty folder, so no half-run data mixes in.
    resumable: bool = False
    # Stages whose outputs this one reads: when one of them runs, this one's output is stale and
    # runs again, even if it was done.
    inputs: tuple[str, ...] = ()


def franka_rl(command: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "franka_rl", command, *args]


@dataclass
class PipelinePlan:
    """Everything needed to build the stages' commands."""

    out: Path
    profile: PipelineProfile
    config: str | None = None
    overrides: list[str] = field(default_factory=list)  # the user's, after the profile's

    def common(self, stage_key: str, *extra: str) -> list[str]:
        config = ["--config", self.config] if self.config else []
        return [*config, *self.profile.overrides, *self.profile.stage_overrides.get(stage_key, []),
                *self.overrides, *extra]


def data_stages(plan: PipelinePlan) -> list[Stage]:
    """Stages 1-3 and the evaluation of the pre-trained agent (shared by every compared method)."""
    p, out = plan.profile, plan.out
    stages = [
        Stage("demos", out / "demos", [franka_rl(
            "record-demos", "--out", str(out / "demos" / "episodes"), "--successes", str(p.demo_successes),
            *plan.common("demos", "teleop.device=scripted", f"teleop.scripted_noise={p.demo_noise}"))]),
        Stage("offline", out / "offline", [franka_rl(
            "record-demos", "--out", str(out / "offline" / "episodes"), "--successes", str(p.offline_successes),
            *plan.common("offline", "teleop.device=scripted", f"teleop.scripted_noise={p.offline_noise}",
                         f"record.max_episodes={p.offline_max_episodes}", "seed=1000"))]),
    ]
    if p.use_classifier:
        stages += [
            Stage("rewards", out / "rewards", [franka_rl(
                "record-rewards", "--out", str(out / "rewards" / "frames"),
                *plan.common("rewards", f"record.reward_positives={p.reward_positives}",
                             f"record.reward_negatives={p.reward_negatives}", "seed=2000"))]),
            Stage("classifier", out / "classifier", [franka_rl(
                "train-classifier", "--data", str(out / "rewards" / "frames"), "--out",
                str(out / "classifier" / "model"), "--overwrite", *plan.common("classifier"))],
                inputs=("rewards",)),
        ]
    pretrain_dir = out / "pretrain" / "run"
    stages += [
        Stage("pretrain", out / "pretrain", [franka_rl(
            "pretrain", "--preset", "wsrl", "--out", str(pretrain_dir), "--steps", str(p.pretrain_steps),
            *plan.common("pretrain"), "--data", *map(str, offline_data(out)))], resumable=True,
            inputs=("demos", "offline")),
        Stage("eval_pretrain", out / "eval_pretrain", [franka_rl(
            "eval", "--preset", "wsrl", "--checkpoint", str(pretrain_dir), "--episodes", str(p.eval_episodes),
            "--out", str(out / "eval_pretrain" / "eval"), *plan.common("eval"))], inputs=("pretrain",)),
    ]
    return stages


def own_pretrain_stages(plan: PipelinePlan, method: str) -> list[Stage]:
    """Pre-training and its evaluation for a method of OWN_PRETRAIN_PRESETS, from stages 1-2's data."""
    p, out = plan.profile, plan.out
    run_dir = pretrain_run_dir(out, method)
    return [
        Stage(f"pretrain.{method}", run_dir.parent, [franka_rl(
            "pretrain", "--preset", method, "--out", str(run_dir), "--steps", str(p.pretrain_steps),
            *plan.common("pretrain"), "--data", *map(str, offline_data(out)))], resumable=True,
            inputs=("demos", "offline")),
        Stage(f"eval_pretrain.{method}", out / f"eval_pretrain.{method}", [franka_rl(
            "eval", "--preset", method, "--checkpoint", str(run_dir), "--episodes", str(p.eval_episodes),
            "--out", str(out / f"eval_pretrain.{method}" / "eval"), *plan.common("eval"))],
            inputs=(f"pretrain.{method}",)),
    ]


def pretrain_run_dir(out: Path, method: str) -> Path:
    """Where the pre-trained agent a method starts from lives."""
    return out / (f"pretrain.{method}" if method in OWN_PRETRAIN_PRESETS else "pretrain") / "run"


def pretrain_eval_results(out: Path, method: str) -> Path:
    return out / (f"eval_pretrain.{method}" if method in OWN_PRETRAIN_PRESETS else "eval_pretrain") / "eval" / \
        "results.json"


def offline_data(out: Path) -> list[Path]:
    return [out / "demos" / "episodes", out / "offline" / "episodes"]


def preset_has_warmup(method: str) -> bool:
    from franka_rl.config import load_config

    return load_config(preset=method).agent.online.warmup_steps > 0


def preset_samples_offline_data(method: str) -> bool:
    """Whether the method's online batches mix in offline data (RLPD's half, Cal-QL fine-tuning's
    proportional share, Off2On's balanced replay): its learner then needs the episode folders."""
    from franka_rl.config import load_config

    agent = load_config(preset=method).agent
    return agent.online.offline_ratio != 0 or agent.off2on.enabled


def online_stage(plan: PipelinePlan, method: str, seed: int, name: str, directory: Path, port: int) -> Stage:
    """Learner and actor of one method and seed; the actor rewards with the classifier."""
    p, out = plan.profile, plan.out
    shared = [f"seed={seed}", f"transport.port={port}", f"env.real_time={str(p.online_real_time).lower()}"]
    if preset_has_warmup(method):
        shared.append(f"agent.online.warmup_steps={p.warmup_steps}")
    learner_args = ["--preset", method]
    pretrained = method in PRETRAINED_PRESETS or method in OWN_PRETRAIN_PRESETS
    if pretrained:
        learner_args += ["--pretrained", str(pretrain_run_dir(out, method) / "checkpoints")]
    learner = franka_rl(
        "learner", *learner_args,
        *plan.common("learner", *shared, f"learner.run_dir={directory / 'learner'}",
                     # keep every checkpoint: stage 5 evaluates the one nearest each mark
                     "learner.keep_checkpoints=100000",
                     f"learner.checkpoint_interval_s={p.checkpoint_interval_s}"))
    offline_inputs: tuple[str, ...] = ()
    if preset_samples_offline_data(method):
        learner += ["--offline-data", *map(str, offline_data(out))]
        offline_inputs = ("demos", "offline")
    reward = (["classifier.enabled=true", f"classifier.model_dir={out / 'classifier' / 'model'}"]
              if p.use_classifier else [])
    actor = franka_rl("actor", "--preset", method,
                      *plan.common("actor", *shared, f"actor.episodes_dir={directory / 'episodes'}", *reward))
    pretrain_stage = f"pretrain.{method}" if method in OWN_PRETRAIN_PRESETS else "pretrain"
    inputs = ((pretrain_stage,) if pretrained else ()) + offline_inputs
    if p.use_classifier:
        inputs += ("classifier",)
    return Stage(name, directory, [learner, actor], online_steps=p.online_steps,
                 episodes_dir=directory / "episodes", inputs=inputs)


def checkpoint_transitions(learner_dir: Path) -> dict[int, int]:
    """{checkpoint step: online transitions it holds}, read from each checkpoint's metadata."""
    from agent.checkpoint import AgentCheckpointer

    checkpointer = AgentCheckpointer(learner_dir / "checkpoints", max_to_keep=None)
    return {step: int(checkpointer.read_meta(step)["extra"].get("transitions", 0))
            for step in checkpointer.finished_steps()}


def nearest_checkpoints(transitions: dict[int, int], marks: Sequence[int]) -> dict[int, tuple[int, int]]:
    """{mark: (checkpoint step, its online transitions)} of the checkpoint nearest each mark. A
    mark after 0 takes a checkpoint that holds online data where one exists: a learner whose
    first checkpoint came before any transition (it was still compiling while the actor ran) must
    not report its starting policy as the policy after those steps."""
    if not transitions:
        return {}
    trained = {step: count for step, count in transitions.items() if count > 0}
    picks = {}
    for mark in marks:
        candidates = trained if mark > 0 and trained else transitions
        picks[mark] = min(candidates.items(), key=lambda st: (abs(st[1] - mark), st[0]))
    return picks


def eval_commands(plan: PipelinePlan, method: str, learner_dir: Path,
                  directory: Path) -> tuple[list[list[str]], dict[str, dict]]:
    """One eval per learner checkpoint nearest a mark (marks sharing a checkpoint share its eval),
    all with the config's seed, so every method, training seed and mark meets the same starts.
    Mark 0 of a method that starts from the Cal-QL checkpoint is that checkpoint's evaluation:
    the learner starts from exactly that state."""
    picks = nearest_checkpoints(checkpoint_transitions(learner_dir), plan.profile.eval_marks)
    commands, marks = [], {}
    for mark in plan.profile.eval_marks:
        if mark == 0 and (method in PRETRAINED_PRESETS or method in OWN_PRETRAIN_PRESETS):
            marks["0"] = {"checkpoint": "pretrain", "online_steps": 0,
                          "results": str(pretrain_eval_results(plan.out, method))}
            continue
        if mark not in picks:
            continue
        step, transitions = picks[mark]
        out = directory / f"checkpoint_{step}"
        marks[str(mark)] = {"checkpoint": step, "online_steps": transitions, "results": str(out / "results.json")}
        command = franka_rl("eval", "--preset", method, "--checkpoint", str(learner_dir), "--step", str(step),
                            "--episodes", str(plan.profile.eval_episodes), "--out", str(out),
                            *plan.common("eval"))
        if command not in commands:
            commands.append(command)
    return commands, marks


# ----------------------------------------------------------------------------- running


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shell_line(command: Sequence[str]) -> str:
    """The command as a user types it: `franka-rl ...` instead of `python -m franka_rl ...`."""
    if list(command[:3]) == [sys.executable, "-m", "franka_rl"]:
        command = ["franka-rl", *command[3:]]
    return shlex.join(command)


class Children:
    """Every process the pipeline started; `stop_all` ends them (SIGINT, then SIGKILL of the whole
    process group), so no exit path leaves one behind."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen] = []

    def start(self, command: Sequence[str], log, echo: Callable[[bytes], None] | None) -> subprocess.Popen:
        # Own process group: a Ctrl-C in the terminal reaches the pipeline only, which then
        # stops each child in order (the actor before the learner).
        process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.processes.append(process)
        process.pump = threading.Thread(target=_pump, args=(process.stdout, log, echo), daemon=True)
        process.pump.start()
        return process

    @staticmethod
    def stop(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> int:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGINT)
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
        return process.returncode

    def stop_all(self, grace_s: float = STOP_GRACE_S) -> None:
        for process in reversed(self.processes):  # the actor before the learner
            self.stop(process, grace_s)
            self.drain(process)  # its last words (shutdown, final checkpoint) reach its log
        self.processes.clear()

    @staticmethod
    def drain(process: subprocess.Popen) -> None:
        """Wait until the process's output is all in its log (before the log file closes)."""
        process.pump.join(timeout=10)


def _pump(stream, log, echo: Callable[[bytes], None] | None) -> None:
    """Copy a child's output to its log file and, live, to the terminal. Reads chunks, not lines,
    so tqdm's carriage-return updates show as they happen."""
    while True:
        chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
        if not chunk:
            break
        log.write(chunk)
        log.flush()
        if echo is not None:
            echo(chunk)
    stream.close()


def _echo_to_stderr(chunk: bytes) -> None:
    sys.stderr.buffer.write(chunk)
    sys.stderr.buffer.flush()


def prune_old_buffers(learner_dir: Path) -> int:
    """Delete the replay-buffer files no longer needed to resume the learner. The pipeline keeps
    all checkpoints for the evaluations at the marks, but only the latest one's buffer snapshot
    (the segments its chain names) is needed to resume."""
    from agent.checkpoint import AgentCheckpointer
    from agent.learner import snapshot_chain

    checkpointer = AgentCheckpointer(learner_dir / "checkpoints", max_to_keep=None)
    finished = checkpointer.finished_steps()
    if not finished:
        return 0
    keep = {segment["file"] for segment in snapshot_chain(checkpointer.read_meta(finished[-1])["extra"])}
    pruned = 0
    for path in (learner_dir / "replay").glob("buffer_*.npz"):
        if path.name not in keep:
            path.unlink()
            pruned += 1
    return pruned


def count_online_steps(episodes_dir: Path) -> tuple[int, int, int]:
    """(env steps, episodes, successes) in the actor's episode store so far."""
    from agent.data.episodes import EpisodeStore

    if not episodes_dir.is_dir():
        return 0, 0, 0
    store = EpisodeStore(episodes_dir, report=lambda _: None)
    steps = episodes = successes = 0
    for _, meta in store.metadata():
        steps += int(meta.get("length", 0))
        episodes += 1
        successes += bool(meta.get("success", False))
    return steps, episodes, successes


def check_learner_stored(stage: Stage, produced: int, log_path: Path, out: Path) -> int:
    """The online stage is done only when the learner stored every step the actor recorded and
    checkpointed them: the actor's episode files alone say nothing about what was learned from."""
    from franka_rl.commands.learner import SUMMARY_FILE

    path = stage.directory / "learner" / SUMMARY_FILE
    rerun = f"; rerun the stage: franka-rl pipeline --out {out} --stages {stage.name} [your other options]"
    try:
        summary = json.loads(path.read_text())
        stored, checkpoint = int(summary["transitions_stored"]), summary["last_checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        raise PipelineError(f"stage '{stage.name}' failed (the learner left no readable {path}); "
                            f"log: {log_path}{rerun}") from None
    if stored == 0 or checkpoint is None:
        raise PipelineError(f"stage '{stage.name}' failed (the actor recorded {produced} steps but the learner "
                            f"stored {stored} and {'wrote no checkpoint' if checkpoint is None else 'checkpointed none'}: "
                            f"the actor could not deliver them); logs: {log_path} and the actor's{rerun}")
    if stored < produced:
        raise PipelineError(f"stage '{stage.name}' failed (the learner stored {stored} of the {produced} steps the "
                            f"actor recorded); logs: {log_path} and the actor's{rerun}")
    return stored


@dataclass
class StageResult:
    name: str
    outcome: str  # "ran", "skipped"
    wall_s: float
    commands: list[str]
    details: dict = field(default_factory=dict)


class Runner:
    """Runs stages in order: skip what is done, run the rest, stop at the first failure."""

    def __init__(self, out: Path, *, force: Sequence[str] = (), only: Sequence[str] = (),
                 echo: bool = True, say: Callable[[str], None] | None = None):
        self.out = out
        self.logs = out / "logs"
        self.force = set(force)
        self.only = set(only)
        self.echo = _echo_to_stderr if echo else None
        self.say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self.children = Children()
        self.results: list[StageResult] = []
        # Stages that ran (not skipped) in this invocation: what reads their output runs again.
        self.ran: set[str] = set()

    @staticmethod
    def _matches(name: str, selectors: set[str]) -> bool:
        return any(name == s or name.startswith(s + ".") for s in selectors)

    def selected(self, stage: Stage) -> bool:
        return not self.only or self._matches(stage.name, self.only)

    def run(self, stage: Stage, build: Callable[[], tuple[list[list[str]], dict]] | None = None) -> StageResult | None:
        """Run or skip `stage`. `build`, if given, makes the commands at run time (evaluations)."""
        marker = stage.directory / DONE_FILE
        if not self.selected(stage):
            result = read_done(stage, marker, "skipped (not selected)") if marker.is_file() else None
            if result is not None:
                self.results.append(result)
            return result
        stale_inputs = sorted(self.ran.intersection(stage.inputs))
        forced = self._matches(stage.name, self.force) or bool(stale_inputs)
        if marker.is_file() and not forced:
            result = read_done(stage, marker, "skipped")
            self.say(f"[{stage.name}] done before ({result.wall_s:.0f} s), skipped: {marker}")
            self.results.append(result)
            return result
        if marker.is_file() and stale_inputs:
            self.say(f"[{stage.name}] done before, but {', '.join(stale_inputs)} ran again: rerunning")
        self.ran.add(stage.name)
        marker.unlink(missing_ok=True)
        if stage.directory.exists() and (forced or not stage.resumable):
            shutil.rmtree(stage.directory)
        stage.directory.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        details: dict = {}
        if build is not None:
            stage.commands, details = build()
        log_path = self.logs / f"{stage.name}.log"
        started = time.monotonic()
        with open(log_path, "ab") as log:
            for command in stage.commands:
                log.write(f"\n$ {shell_line(command)}\n".encode())
                log.flush()
            try:
                if stage.online_steps:
                    details.update(self._run_online(stage, log, log_path))
                else:
                    for command in stage.commands:
                        self.say(f"[{stage.name}] {shell_line(command)}")
                        process = self.children.start(command, log, self.echo)
                        code = process.wait()
                        self.children.drain(process)
                        self.children.processes.remove(process)
                        if code != 0:
                            self._fail(stage, log_path, f"exit code {code}")
            except BaseException:
                # Ctrl-C, SIGTERM or a failure: the children stop while their log files are open.
                self.children.stop_all()
                raise
        wall = time.monotonic() - started
        lines = [shell_line(c) for c in stage.commands]
        (marker.parent / (DONE_FILE + ".tmp")).write_text(json.dumps(
            {"stage": stage.name, "commands": lines, "wall_s": wall, "details": details,
             "finished_at": time.time()}, indent=2) + "\n")
        (marker.parent / (DONE_FILE + ".tmp")).replace(marker)  # written last: the stage is complete
        self.say(f"[{stage.name}] done in {wall:.0f} s")
        result = StageResult(stage.name, "ran", wall, lines, details)
        self.results.append(result)
        return result

    def _fail(self, stage: Stage, log_path: Path, why: str) -> None:
        raise PipelineError(f"stage '{stage.name}' failed ({why}); log: {log_path} (it starts with the command, "
                            f"to run by hand); rerun the stage: franka-rl pipeline --out {self.out} "
                            f"--stages {stage.name} [your other options]")

    def _run_online(self, stage: Stage, log, log_path: Path) -> dict:
        """Learner and actor together until the actor's store holds `online_steps` env steps; then
        SIGINT the actor (it ends its episode and flushes to the learner), then the learner (final
        checkpoint)."""
        learner_cmd, actor_cmd = stage.commands
        assert stage.episodes_dir is not None
        self.say(f"[{stage.name}] {shell_line(learner_cmd)}")
        self.say(f"[{stage.name}] {shell_line(actor_cmd)}")
        with open(self.logs / f"{stage.name}.actor.log", "ab") as actor_log:
            actor_log.write(f"\n$ {shell_line(actor_cmd)}\n".encode())
            learner = self.children.start(learner_cmd, log, None)
            actor = self.children.start(actor_cmd, actor_log, None)
            try:
                steps = episodes = successes = 0
                last_print = 0.0
                while steps < stage.online_steps:
                    for name, process, path in (("learner", learner, log_path),
                                                ("actor", actor, self.logs / f"{stage.name}.actor.log")):
                        if process.poll() is not None:
                            raise PipelineError(
                                f"stage '{stage.name}' failed (the {name} exited with code {process.returncode} "
                                f"before {stage.online_steps} online steps); log: {path}; rerun the stage: "
                                f"franka-rl pipeline --out {self.out} --stages {stage.name} [your other options]")
                    time.sleep(1.0)
                    steps, episodes, successes = count_online_steps(stage.episodes_dir)
                    if time.monotonic() - last_print >= 10.0:
                        self.say(f"[{stage.name}] online steps {steps}/{stage.online_steps}, episodes {episodes}, "
                                 f"training-episode successes {successes}")
                        last_print = time.monotonic()
            except BaseException:
                self.children.stop_all()  # before the actor's log file closes
                raise
            actor_code = self.children.stop(actor)
            learner_code = self.children.stop(learner)
            self.children.processes.clear()
            self.children.drain(actor)
            self.children.drain(learner)
        steps, episodes, successes = count_online_steps(stage.episodes_dir)
        if learner_code != 0:
            raise PipelineError(f"stage '{stage.name}' failed (the learner exited with code {learner_code} on "
                                f"stop); see {log_path}")
        stored = check_learner_stored(stage, steps, log_path, self.out)
        pruned = prune_old_buffers(stage.directory / "learner")
        return {"online_steps": steps, "episodes": episodes, "successes": successes,
                "transitions_stored": stored, "actor_exit": actor_code, "pruned_buffer_files": pruned}


def read_done(stage: Stage, marker: Path, outcome: str) -> StageResult:
    try:
        done = json.loads(marker.read_text())
    except (OSError, ValueError):
        marker.unlink(missing_ok=True)
        raise PipelineError(f"{marker} is unreadable; it was removed, run the pipeline again to redo "
                            f"stage '{stage.name}'") from None
    return StageResult(stage.name, outcome, float(done.get("wall_s", 0.0)), list(done.get("commands", [])),
                       dict(done.get("details", {})))


# ----------------------------------------------------------------------------- the pipeline


def run_pipeline(plan: PipelinePlan, *, methods: Sequence[str] = ("wsrl",), seeds: Sequence[int] = (0,),
                 force: Sequence[str] = (), only: Sequence[str] = (), echo: bool = True,
                 say: Callable[[str], None] | None = None) -> Path:
    """Run every stage (skipping completed ones) and write `<out>/report/`; returns its path."""
    from franka_rl.pipeline_report import write_report

    plan.out.mkdir(parents=True, exist_ok=True)
    runner = Runner(plan.out, force=force, only=only, echo=echo, say=say)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    runs: list[dict] = []
    compare = len(methods) > 1 or len(seeds) > 1
    try:
        for stage in data_stages(plan):
            runner.run(stage)
        for method in dict.fromkeys(m for m in methods if m in OWN_PRETRAIN_PRESETS):
            for stage in own_pretrain_stages(plan, method):
                runner.run(stage)
        for method in methods:
            for seed in seeds:
                suffix = f".{method}.s{seed}" if compare else ""
                base = plan.out / ("compare" if compare else "") / (f"{method}_s{seed}" if compare else "")
                online_dir = base / "online"
                online = online_stage(plan, method, seed, f"online{suffix}", online_dir, free_port())
                runner.run(online)
                learner_dir = online_dir / "learner"
                evaluation = Stage(f"eval_online{suffix}", base / "eval_online", [], inputs=(online.name,))
                runner.run(evaluation, build=lambda m=method, ld=learner_dir, d=evaluation.directory:
                           _eval_build(plan, m, ld, d))
                runs.append({"method": method, "seed": seed, "online": f"online{suffix}",
                             "eval": f"eval_online{suffix}", "online_dir": str(online_dir),
                             "eval_dir": str(evaluation.directory)})
    except PipelineError:  # Runner.run has stopped the stage's children already
        write_report(plan, runner.results, runs, compare=compare)  # what finished so far
        raise
    finally:
        runner.children.stop_all()
        signal.signal(signal.SIGTERM, previous)
    return write_report(plan, runner.results, runs, compare=compare)


def _eval_build(plan: PipelinePlan, method: str, learner_dir: Path, directory: Path):
    if not (learner_dir / "checkpoints").is_dir():
        raise PipelineError(f"no learner checkpoints in {learner_dir}: run the online stage first")
    commands, marks = eval_commands(plan, method, learner_dir, directory)
    return commands, {"marks": marks}
