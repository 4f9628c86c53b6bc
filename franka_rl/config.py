"""The whole run's configuration: typed dataclasses, loaded from YAML with command-line overrides.

    cfg = load_config("configs/peg_insertion_sim.yaml", ["env.control_hz=20", "seed=3"])

OmegaConf's structured configs check every key and type against the dataclasses; this module turns
its errors into one line that names the offending key and the file it came from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from agent.config import AgentConfig
from agent.offline_config import EvalConfig, PretrainConfig
from agent.process_config import ActorConfig, LearnerConfig, TransportConfig
from reward_classifier.config import ClassifierConfig
from robot_env.config import EnvConfig, TaskConfig
from robot_env.errors import ConfigError
from robot_env.real_config import RealConfig
from sim.config import SimConfig
from teleop.config import RecordConfig, TeleopConfig

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


_VALID_MODES = ("sim", "real")


def _explain(exc: OmegaConfBaseException, source: str) -> str:
    key = getattr(exc, "full_key", None) or "?"
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{source}: bad config key '{key}': {msg}. Fix or remove it (see `franka-rl show-config`)."


def agent_presets() -> list[str]:
    """Names of the agent presets in configs/agents/."""
    return sorted(p.stem for p in AGENT_PRESET_DIR.glob("*.yaml"))


def _load_agent_preset(name: str):
    path = AGENT_PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown agent preset '{name}'; available: {', '.join(agent_presets())} "
                          f"(files in {AGENT_PRESET_DIR})")
    try:
        tree = OmegaConf.load(path)
    except OmegaConfBaseException as exc:
        raise ConfigError(_explain(exc, str(path))) from None
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
    try:
        from_file = OmegaConf.merge(schema, OmegaConf.load(path))
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
    if cfg.mode not in _VALID_MODES:
        raise ConfigError(f"mode must be one of {_VALID_MODES}, got '{cfg.mode}'")
    return cfg


def _apply_overrides(merged, overrides: list[str] | None):
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. env.control_hz=20)")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise ConfigError(_explain(exc, f"override '{item}'")) from None
    return merged


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
