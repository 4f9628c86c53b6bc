"""The whole run's configuration: typed dataclasses, loaded from YAML with command-line overrides.

    cfg = load_config("configs/peg_insertion_sim.yaml", ["env.control_hz=20", "seed=3"])

OmegaConf's structured configs check every key and type against the dataclasses; this module turns
its errors into one line that names the offending key and the file it came from. Values are then
checked by each package's own validator (`validate_config`), so a run that cannot work stops at
load time with a ConfigError naming the key, not with a traceback minutes later.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from agent.config import AgentConfig, validate_agent_config
from agent.metrics import MetricsConfig, validate_metrics_config
from agent.offline_config import EvalConfig, PretrainConfig, validate_offline_config
from agent.process_config import (
    ActorConfig,
    LearnerConfig,
    TransportConfig,
    validate_process_config,
)
from reward_classifier.config import ClassifierConfig, validate_classifier_config
from robot_env.config import EnvConfig, TaskConfig, validate_env_config, validate_task_config
from robot_env.errors import ConfigError
from robot_env.real_config import RealConfig, validate_real_config
from sim.config import SimConfig, validate_sim_config
from teleop.config import RecordConfig, TeleopConfig, validate_teleop_config

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "peg_insertion_sim.yaml"
AGENT_PRESET_DIR = CONFIG_DIR / "agents"


@dataclass
class Config:
    # "sim" drives the MuJoCo twin; "real" drives the arm through franky.
    mode: str = "sim"
    seed: int = 0
    # Where runs write their outputs (episodes, checkpoints, reports).
    output_dir: str = "runs"
    task: TaskConfig = field(default_factory=TaskConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    real: RealConfig = field(default_factory=RealConfig)
    # A file in configs/agents/ (without .yaml) applied over `agent:`; "" = none. See load_config.
    agent_preset: str = ""
    agent: AgentConfig = field(default_factory=AgentConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    teleop: TeleopConfig = field(default_factory=TeleopConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    # The online processes (docs/processes.md); left out of config_hash like teleop and record.
    transport: TransportConfig = field(default_factory=TransportConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    # Where metrics go besides metrics.jsonl and tensorboard/: metrics.wandb (agent/metrics.py).
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


_VALID_MODES = ("sim", "real")


def _explain(exc: OmegaConfBaseException, source: str) -> str:
    key = getattr(exc, "full_key", None) or "?"
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{source}: bad config key '{key}': {msg}. Fix or remove it (see `franka-rl show-config`)."


def _find_duplicate(path: Path, line: int) -> tuple[str, int] | None:
    """The dotted key of the duplicate on `line` (0-based) and the line of its first occurrence,
    found on the YAML node tree: composing builds no mappings, so duplicates survive it."""

    def walk(node: yaml.Node, prefix: str) -> tuple[str, int] | None:
        if isinstance(node, yaml.MappingNode):
            first_lines: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                if key_node.value in first_lines and key_node.start_mark.line == line:
                    return key, first_lines[key_node.value]
                first_lines.setdefault(key_node.value, key_node.start_mark.line)
                if (found := walk(value_node, key)) is not None:
                    return found
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                if (found := walk(item, f"{prefix}[{index}]")) is not None:
                    return found
        return None

    try:
        root = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    return walk(root, "") if root is not None else None


def _load_yaml(path: Path) -> DictConfig:
    """OmegaConf.load, with malformed YAML and duplicate keys as one line naming the file and line."""
    try:
        tree = OmegaConf.load(path)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}, line {mark.line + 1}" if mark else str(path)
        problem = exc.problem or "malformed YAML"
        if problem.startswith("found duplicate key") and mark is not None:
            # OmegaConf's loader refuses duplicates where PyYAML would keep the last one silently.
            found = _find_duplicate(path, mark.line)
            key, first = found if found else (problem.removeprefix("found duplicate key "), None)
            earlier = f" (first set on line {first + 1})" if first is not None else ""
            raise ConfigError(f"{where}: duplicate key '{key}'{earlier}; keep one of them") from None
        context = ""
        if exc.context and exc.context_mark is not None:
            context = f" ({exc.context} that starts on line {exc.context_mark.line + 1})"
        raise ConfigError(f"{where}, column {mark.column + 1}: malformed YAML: {problem}{context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {str(exc).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file; a config is YAML text") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(_explain(exc, str(path))) from None
    if not isinstance(tree, DictConfig):
        raise ConfigError(f"{path}: a config file is a mapping of sections (task:, env:, ...), not a list")
    return tree


def agent_presets() -> list[str]:
    """Names of the agent presets in configs/agents/."""
    return sorted(p.stem for p in AGENT_PRESET_DIR.glob("*.yaml"))


def _load_agent_preset(name: str):
    path = AGENT_PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown agent preset '{name}'; available: {', '.join(agent_presets())} "
                          f"(files in {AGENT_PRESET_DIR})")
    tree = _load_yaml(path)
    extra = sorted(set(tree.keys()) - {"agent"})
    if extra:
        raise ConfigError(f"{path}: an agent preset may only set 'agent:', not {extra}")
    return tree


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    preset: str | None = None,
    default_preset: str = "",
) -> Config:
    """Load `path` (default: the twin's peg insertion) over the dataclass defaults, then an agent
    preset, then `overrides` given as `dotted.key=value` strings.

    The preset is `preset` if given, else the `agent_preset` key (from an override or the file),
    else `default_preset`; it applies over the file and under the command-line overrides.
    """
    schema = OmegaConf.structured(Config)
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; the presets live in {CONFIG_DIR}")
    tree = _load_yaml(path)
    try:
        from_file = OmegaConf.merge(schema, tree)
    except OmegaConfBaseException as exc:
        raise ConfigError(_explain(exc, str(path))) from None
    merged = _apply_overrides(from_file, overrides)
    preset = preset or merged.agent_preset or default_preset
    if preset:
        tree = _load_agent_preset(preset)
        try:
            merged = OmegaConf.merge(from_file, tree)
        except OmegaConfBaseException as exc:
            raise ConfigError(_explain(exc, str(AGENT_PRESET_DIR / f"{preset}.yaml"))) from None
        merged = _apply_overrides(merged, overrides)
        merged.agent_preset = preset
    try:
        cfg: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(_explain(exc, str(path))) from None
    validate_config(cfg)
    return cfg


def _non_finite(node: Any, key: str) -> Iterator[tuple[str, float]]:
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            yield from _non_finite(getattr(node, f.name), f"{key}.{f.name}" if key else f.name)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _non_finite(item, f"{key}[{index}]")
    elif isinstance(node, float) and not math.isfinite(node):
        yield key, node


def validate_config(cfg: Config) -> None:
    """Raise ConfigError naming the first key whose value cannot work. Each section is checked by
    the package that owns it; this adds the root keys, the cross-section rules and NaN/inf."""
    if cfg.mode not in _VALID_MODES:
        raise ConfigError(f"mode must be one of {_VALID_MODES}, got '{cfg.mode}'")
    if cfg.seed < 0:
        raise ConfigError(f"seed must be >= 0, got {cfg.seed}")
    if not cfg.output_dir:
        raise ConfigError("output_dir must not be empty (e.g. runs)")
    # No key means anything by NaN or inf, and both slip through every `x > 0` check written as
    # `x <= 0: raise` (NaN) or turn a bound into none at all (inf).
    for key, value in _non_finite(cfg, ""):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    validate_task_config(cfg.task)
    validate_env_config(cfg.env)
    validate_sim_config(cfg.sim)
    validate_real_config(cfg.real)
    validate_agent_config(cfg.agent)
    validate_offline_config(cfg.pretrain, cfg.eval)
    validate_teleop_config(cfg.teleop, cfg.record)
    validate_process_config(cfg.transport, cfg.actor, cfg.learner, max_episode_steps=cfg.task.max_episode_steps)
    validate_classifier_config(cfg.classifier)
    validate_metrics_config(cfg.metrics)


def _apply_overrides(merged, overrides: list[str] | None):
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. env.control_hz=20)")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise ConfigError(_explain(exc, f"override '{item}'")) from None
        except TypeError:
            # OmegaConf's merge of `list.0.key=...` (a mapping onto a list) fails without naming a key.
            parts = item.split("=", 1)[0].split(".")
            list_key = ".".join(parts[:next((i for i, p in enumerate(parts) if p.isdigit()), len(parts))])
            raise ConfigError(f"override '{item}' sets an item of a list by index, which overrides cannot; "
                              f"give the whole list ({list_key}=[...]) or edit the file") from None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"override '{item}': the value is not valid YAML ({problem}); "
                              "quote it or fix its brackets") from None
    return merged


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
