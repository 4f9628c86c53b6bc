"""Is the critic calibrated? Q(s, π(s)) against the Monte-Carlo return G along whole episodes.

Cal-QL's claim (Nakamoto et al. 2023) is that its Q-values sit at or above the returns of the
data's behaviour (the bound max(Q, G) stops the conservative push-down there), while plain CQL's
sit below them: an under-estimating critic "unlearns" at the start of fine-tuning. These pure
functions measure that on held-out episodes and draw it:

    q, g = calibration_points(agent, held_out_episodes)
    summary = calibration_summary(q, g)          # mean Q - G, fraction of Q above G, ...
    plot_calibration({"Cal-QL": (q, g)}, "calibration.png")

G is computed exactly as for training (agent/returns.py) with the agent's own reward shaping and
discount; Q is the ensemble mean at the deterministic policy action tanh(mean).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from agent.core import Agent, encode, ensemble_eval_actions, is_ensemble, policy
from agent.data.episodes import Episode
from agent.off2on import ensemble_q
from agent.returns import RewardShaping

Curves = list[np.ndarray]


@jax.jit
def policy_q_values(agent: Agent, observations: dict) -> jax.Array:
    """Ensemble-mean Q(s, tanh(mean π(s))) for a batch of observations -> (B,). An Off2On ensemble:
    its own action, Q averaged over members and their critics."""
    if is_ensemble(agent):
        return ensemble_q(agent, observations, ensemble_eval_actions(agent, observations))
    features = encode(agent, agent.critic.params, observations)
    mean, _ = policy(agent, agent.actor.params, features)
    q = agent.nets.critic.apply({"params": agent.critic.params["q"]}, features, jnp.tanh(mean))
    return q.mean(axis=0)


@jax.jit
def data_q_values(agent: Agent, observations: dict, actions: jax.Array) -> jax.Array:
    """Ensemble-mean Q(s, a) at given (e.g. recorded) actions -> (B,)."""
    if is_ensemble(agent):
        return ensemble_q(agent, observations, actions)
    features = encode(agent, agent.critic.params, observations)
    return agent.nets.critic.apply({"params": agent.critic.params["q"]}, features, actions).mean(axis=0)


def _agent_observations(agent: Agent, episode: Episode) -> dict[str, np.ndarray]:
    keys = [*agent.spec.image_keys, *([agent.spec.state_key] if agent.spec.state_key else [])]
    missing = [k for k in keys if k not in episode.observations]
    if missing:
        raise KeyError(f"episode lacks observation keys {missing} that the agent reads")
    return {k: episode.observations[k][:-1] for k in keys}  # o_0 .. o_{T-1}: one per step


def episode_returns(agent: Agent, episode: Episode, sparse: bool = True) -> np.ndarray:
    """G_t of every step on the agent's shaped reward, from the episode's rewards (sparse failures:
    r'_neg / (1 - γ)), exactly as the replay buffers compute it."""
    spec = agent.spec
    shaping = RewardShaping(scale=spec.reward.scale, bias=spec.reward.bias, discount=spec.sac.discount, sparse=sparse)
    return shaping.episode_returns(episode.rewards, episode.terminated)


def episode_calibration(agent: Agent, episode: Episode, sparse: bool = True, actions: str = "policy",
                        chunk: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(Q, G) at every step of one episode; Q at the policy's action ("policy") or the recorded one ("data")."""
    if actions not in ("policy", "data"):
        raise ValueError(f"actions must be 'policy' or 'data', got '{actions}'")
    steps = len(episode)
    # Padded to whole chunks (edge rows) so that every episode length shares one compiled shape.
    padded = -(-steps // chunk) * chunk
    observations = {k: _pad(v, padded) for k, v in _agent_observations(agent, episode).items()}
    recorded = _pad(np.asarray(episode.actions, np.float32), padded)
    parts = []
    for start in range(0, padded, chunk):
        obs = {k: v[start:start + chunk] for k, v in observations.items()}
        q = policy_q_values(agent, obs) if actions == "policy" else data_q_values(agent, obs, recorded[start:start + chunk])
        parts.append(np.asarray(q))
    q = np.concatenate(parts)[:steps] if parts else np.zeros(0, np.float32)
    return q.astype(np.float32), episode_returns(agent, episode, sparse)


def _pad(array: np.ndarray, length: int) -> np.ndarray:
    if len(array) == length or len(array) == 0:
        return array
    return np.concatenate([array, np.repeat(array[-1:], length - len(array), axis=0)])


def calibration_points(agent: Agent, episodes: Sequence[Episode], sparse: bool = True,
                       actions: str = "policy") -> tuple[Curves, Curves]:
    """(Q per episode, G per episode): lists of per-step arrays, one pair per episode. Q is
    Q(s, π(s)) (`actions="policy"`, deterministic action) or Q(s, a) at the recorded actions ("data")."""
    pairs = [episode_calibration(agent, episode, sparse, actions) for episode in episodes]
    return [q for q, _ in pairs], [g for _, g in pairs]


def calibration_summary(q: Curves, g: Curves) -> dict[str, float]:
    """Scalars over all steps: mean Q, mean G, mean Q - G, fraction with Q >= G, RMSE, correlation."""
    q_all = np.concatenate(q) if q else np.zeros(0)
    g_all = np.concatenate(g) if g else np.zeros(0)
    if q_all.size == 0:
        return {"points": 0}
    gap = q_all - g_all
    spread = q_all.std() * g_all.std()
    return {
        "points": int(q_all.size),
        "episodes": len(q),
        "mean_q": float(q_all.mean()),
        "mean_g": float(g_all.mean()),
        "mean_q_minus_g": float(gap.mean()),
        "fraction_q_above_g": float(np.mean(gap >= 0)),
        "rmse": float(np.sqrt(np.mean(gap ** 2))),
        "correlation": float(np.corrcoef(q_all, g_all)[0, 1]) if spread > 0 else float("nan"),
    }


def episodes_title(runs: Mapping[str, tuple[Curves, Curves]], episodes_to_show: int,
                   episode_set: str = "held-out") -> str:
    """The curve panel's title, counting the episodes actually drawn: "Q and G along 2 of 5
    held-out episodes" (every run draws its first `episodes_to_show`, or all it has)."""
    available = max((len(q) for q, _ in runs.values()), default=0)
    shown = min(max(episodes_to_show, 0), available)
    plural = "episode" if available == 1 else "episodes"
    if shown == available:
        return f"Q and G along {'the' if available == 1 else 'all'} {available} {episode_set} {plural}"
    return f"Q and G along {shown} of {available} {episode_set} {plural}"


def plot_calibration(runs: Mapping[str, tuple[Curves, Curves]], path: str | Path, *,
                     episodes_to_show: int = 3, title: str = "", episode_set: str = "held-out") -> Path:
    """Left: Q against G for every step (one colour per run) with the line Q = G. Right: Q (solid)
    and G (dashed) along the first `episodes_to_show` episodes of each run. `episode_set` names
    what the episodes are ("held-out", "training") in the panel titles."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (scatter, curves) = plt.subplots(1, 2, figsize=(11, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    low, high = np.inf, -np.inf
    for index, (label, (q, g)) in enumerate(runs.items()):
        colour = colours[index % len(colours)]
        q_all, g_all = np.concatenate(q), np.concatenate(g)
        gap = float(np.mean(q_all - g_all))
        scatter.scatter(g_all, q_all, s=6, alpha=0.4, color=colour, label=f"{label} (mean Q-G {gap:+.2f})")
        low = min(low, q_all.min(), g_all.min())
        high = max(high, q_all.max(), g_all.max())
        offset = 0
        for episode, (q_ep, g_ep) in enumerate(zip(q[:episodes_to_show], g[:episodes_to_show], strict=True)):
            steps = np.arange(offset, offset + len(q_ep))
            curves.plot(steps, q_ep, color=colour, lw=1.2, label=f"{label}: Q" if episode == 0 else None)
            curves.plot(steps, g_ep, color=colour, lw=1.0, ls="--", label=f"{label}: G" if episode == 0 else None)
            offset += len(q_ep) + 5
    scatter.plot([low, high], [low, high], color="black", lw=1, label="Q = G")
    scatter.set_xlabel("Monte-Carlo return G")
    scatter.set_ylabel("Q(s, π(s))")
    scatter.set_title(f"{episode_set} steps")
    scatter.legend(fontsize=8)
    curves.set_xlabel("step (episodes side by side)")
    curves.set_ylabel("value")
    curves.set_title(episodes_title(runs, episodes_to_show, episode_set))
    curves.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
