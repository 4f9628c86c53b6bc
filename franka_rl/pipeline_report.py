"""The pipeline's report folder: results.md, commands.md, summary.json and the plots.

Everything is read back from the stages' own outputs (DONE.json markers, eval results.json,
checkpoint metadata, the actor's episode store), so a report rebuilt later says the same.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _fraction(result: dict | None) -> str:
    if not result:
        return "–"
    return f"{result['successes']}/{result['episodes']}"


def mark_results(eval_dir: Path, marks: Sequence[int]) -> dict[int, dict]:
    """{mark: eval results.json + the online steps its checkpoint held} for the marks evaluated."""
    done = _read_json(eval_dir / "DONE.json") or {}
    picks = done.get("details", {}).get("marks", {})
    found = {}
    for mark in marks:
        pick = picks.get(str(mark))
        result = _read_json(Path(pick["results"])) if pick else None
        if result is not None:
            found[mark] = {**result, "online_steps": pick["online_steps"], "checkpoint": pick["checkpoint"],
                           "results_path": pick["results"]}
    return found


def seed_rates(runs: Sequence[dict], method: str, mark: int) -> list[float]:
    """Evaluation success rate at `mark` of each of the method's seeds that reached it."""
    return [res["success_rate"] for r in runs if r["method"] == method
            if (res := mark_results(Path(r["eval_dir"]), [mark]).get(mark)) is not None]


def training_episode_curve(episodes_dir: Path, window: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(cumulative online steps at each episode's end, moving success over `window` episodes)."""
    from agent.data.episodes import EpisodeStore

    if not episodes_dir.is_dir():
        return np.zeros(0), np.zeros(0)
    metas = [meta for _, meta in EpisodeStore(episodes_dir, report=lambda _: None).metadata()]
    steps = np.cumsum([int(m.get("length", 0)) for m in metas])
    success = np.array([float(bool(m.get("success", False))) for m in metas])
    moving = np.array([success[max(0, i + 1 - window): i + 1].mean() for i in range(len(success))])
    return steps, moving


def _success_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4.2))


def _save_success_figure(fig, ax, path: Path, *, xlabel: str, title: str, legend_size: int) -> Path:
    """The success plots' shared axes (success rate, 0 to 1), legend, title and file."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel("success rate (evaluation)")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=legend_size, loc="best")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_success(runs: Sequence[dict], marks: Sequence[int], path: Path) -> Path:
    """Evaluation success (20 spread starts) at each mark, and the actors' moving training-episode
    success as thin lines, against online env steps."""
    fig, ax = _success_figure()
    colours = {}
    for run in runs:
        method = run["method"]
        colour = colours.setdefault(method, f"C{len(colours)}")
        evals = mark_results(Path(run["eval_dir"]), marks)
        label_seed = f"{method} seed {run['seed']}"
        if evals:
            xs = [evals[m]["online_steps"] for m in sorted(evals)]
            ys = [evals[m]["success_rate"] for m in sorted(evals)]
            ax.plot(xs, ys, "o-", color=colour, label=f"{label_seed}: evaluation")
        steps, moving = training_episode_curve(Path(run["online_dir"]) / "episodes")
        if len(steps):
            ax.plot(steps, moving, "-", color=colour, alpha=0.35, linewidth=1,
                    label=f"{label_seed}: training episodes (moving 20)")
    return _save_success_figure(fig, ax, path, xlabel="online env steps", title="success vs online steps",
                                legend_size=7)


def plot_compare(runs: Sequence[dict], marks: Sequence[int], path: Path) -> Path:
    """Per method: mean evaluation success over seeds at each mark, the band spanning the seeds'
    lowest to highest."""
    fig, ax = _success_figure()
    for index, method in enumerate(dict.fromkeys(r["method"] for r in runs)):
        xs, means, lows, highs = [], [], [], []
        for mark in marks:
            rates = seed_rates(runs, method, mark)
            if rates:
                xs.append(mark)
                means.append(float(np.mean(rates)))
                lows.append(min(rates))
                highs.append(max(rates))
        if not xs:
            continue
        seeds = sum(r["method"] == method for r in runs)
        ax.plot(xs, means, "o-", color=f"C{index}", label=f"{method} (mean of {seeds} seeds)")
        ax.fill_between(xs, lows, highs, color=f"C{index}", alpha=0.15, linewidth=0)
    return _save_success_figure(fig, ax, path, xlabel="online env steps (mark)",
                                title="methods compared: mean and range over seeds", legend_size=8)


#: Off2On's balanced-replay diagnostics in the learner's metrics.jsonl (agent/off2on.py).
OFF2ON_SERIES = {
    "offline_fraction": "train/off2on/offline_fraction",
    "priority_online_mean": "train/off2on/priority_online_mean",
    "priority_offline_mean": "train/off2on/priority_offline_mean",
    "q_auroc": "train/off2on/q_auroc",
}


def balanced_replay_series(learner_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{series: (online transitions, values)} from a learner's metrics.jsonl; empty for a learner
    without balanced replay. The x axis is the online transitions logged with the same learner step."""
    from agent.metrics import read_metrics

    path = learner_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = read_metrics(path)
    transitions = {r["step"]: r["online/transitions"] for r in rows if "online/transitions" in r}
    series = {}
    for name, key in OFF2ON_SERIES.items():
        points = [(transitions[r["step"]], r[key]) for r in rows
                  if key in r and r["step"] in transitions and np.isfinite(r[key])]
        if points:
            xs, ys = zip(*points, strict=True)
            series[name] = (np.asarray(xs, float), np.asarray(ys, float))
    return series


def plot_balanced_replay(runs: Sequence[dict], path: Path) -> Path | None:
    """Off2On runs: the offline fraction of the update batches and the Q-ensemble AUROC against
    online steps (the paper's two diagnostics); None when no run has them."""
    curves = [(run, balanced_replay_series(Path(run["online_dir"]) / "learner")) for run in runs]
    curves = [(run, c) for run, c in curves if c]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for index, (run, c) in enumerate(curves):
        label = f"{run['method']} s{run['seed']}"
        if "offline_fraction" in c:
            left.plot(*c["offline_fraction"], "-", color=f"C{index}", label=label)
        if "q_auroc" in c:
            right.plot(*c["q_auroc"], "-", color=f"C{index}", label=label)
    left.set(xlabel="online env steps", ylabel="offline fraction of update batches", ylim=(-0.03, 1.03),
             title="balanced replay: offline share of each batch")
    right.set(xlabel="online env steps", ylabel="AUROC of Q(s, a_taken) vs Q(s, a_uniform)", ylim=(-0.03, 1.03),
              title="Q-ensemble ranks taken actions above random ones")
    right.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _last(series: dict, name: str) -> str:
    return f"{series[name][1][-1]:.2f}" if name in series else "–"


def _mean(series: dict, name: str) -> str:
    return f"{np.mean(series[name][1]):.2f}" if name in series else "–"


def _balanced_replay_rows(runs: Sequence[dict]) -> list[str]:
    rows = []
    for run in runs:
        c = balanced_replay_series(Path(run["online_dir"]) / "learner")
        if not c:
            continue
        if not rows:
            rows = ["| run | offline fraction (mean / last) | mean w̃ online | mean w̃ offline | Q AUROC (last) |",
                    "|---|---:|---:|---:|---:|"]
        rows.append(f"| {run['method']} s{run['seed']} | {_mean(c, 'offline_fraction')} / "
                    f"{_last(c, 'offline_fraction')} | {_mean(c, 'priority_online_mean')} | "
                    f"{_mean(c, 'priority_offline_mean')} | {_last(c, 'q_auroc')} |")
    return rows


def copy_videos(out: Path, runs: Sequence[dict], marks: Sequence[int], report: Path) -> list[str]:
    """Copy the evaluation videos of the pre-trained policy and (one run) of its last evaluated
    checkpoint into the report: what the numbers look like."""
    copied = []
    sources = [(out / "eval_pretrain" / "eval" / "eval.mp4", "pretrained_policy.mp4")]
    if len(runs) == 1:
        evals = mark_results(Path(runs[0]["eval_dir"]), marks)
        if evals:
            last = Path(evals[max(evals)]["results_path"]).parent / "eval.mp4"
            sources.append((last, f"{runs[0]['method']}_final_policy.mp4"))
    for source, name in sources:
        if source.is_file():
            shutil.copyfile(source, report / name)
            copied.append(name)
    return copied


def _stage_rows(results: Sequence[Any]) -> list[str]:
    rows = ["| stage | outcome | wall-clock | details |", "|---|---|---:|---|"]
    for r in results:
        details = {k: v for k, v in r.details.items() if k != "marks"}
        text = ", ".join(f"{k} {v}" for k, v in details.items())
        rows.append(f"| {r.name} | {r.outcome} | {r.wall_s:.0f} s | {text} |")
    return rows


def _compare_rows(runs: Sequence[dict], marks: Sequence[int], results: Sequence[Any]) -> list[str]:
    """Per method: success at each mark as mean ± half-range over seeds, episodes and wall-clock."""
    walls = {r.name: r for r in results}
    head = ("| method | seeds | " + " | ".join(f"success @ {m}" for m in marks)
            + " | online steps | episodes | online wall-clock |")
    rows = [head, "|---|---:|" + "---:|" * len(marks) + "---:|---:|---:|"]
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        cells = []
        for mark in marks:
            rates = seed_rates(runs, method, mark)
            cells.append(f"{np.mean(rates):.0%} ± {(max(rates) - min(rates)) / 2:.0%} (n={len(rates)})"
                         if rates else "–")
        online = [walls[r["online"]] for r in mine if r["online"] in walls]
        steps = sum(int(o.details.get("online_steps", 0)) for o in online)
        episodes = sum(int(o.details.get("episodes", 0)) for o in online)
        wall = sum(o.wall_s for o in online)
        rows.append(f"| {method} | {len(mine)} | " + " | ".join(cells)
                    + f" | {steps} | {episodes} | {wall / 60:.1f} min |")
    return rows


def write_report(plan: Any, results: Sequence[Any], runs: Sequence[dict], *, compare: bool) -> Path:
    out = plan.out
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    marks = list(plan.profile.eval_marks)
    pretrain_eval = _read_json(out / "eval_pretrain" / "eval" / "results.json")
    from franka_rl.pipeline import OWN_PRETRAIN_PRESETS, pretrain_eval_results

    own_pretrain = {m: _read_json(pretrain_eval_results(out, m))
                    for m in dict.fromkeys(r["method"] for r in runs) if m in OWN_PRETRAIN_PRESETS}

    lines = ["# Pipeline results", "",
             f"Profile: {plan.profile.description or '(custom)'}; output: `{out}`.", "",
             "## Stages", "", *_stage_rows(results), "",
             f"## Success from {plan.profile.eval_episodes} spread initial poses", "",
             f"- Cal-QL offline (pre-trained policy): **{_fraction(pretrain_eval)}**",
             *(f"- {m} offline (its own pre-trained agent): **{_fraction(r)}**" for m, r in own_pretrain.items()),
             ""]
    if compare:
        lines += ["Success at each online-step mark (mean ± half the range over seeds; each seed "
                  "evaluated at its learner checkpoint nearest the mark); online steps, episodes and "
                  "wall-clock summed over the seeds:", "",
                  *_compare_rows(runs, marks, results), ""]
    else:
        lines += ["| online-step mark | checkpoint evaluated | its online steps | success |", "|---:|---|---:|---:|"]
        for run in runs:
            for mark, res in sorted(mark_results(Path(run["eval_dir"]), marks).items()):
                lines.append(f"| {mark} | {res['checkpoint']} | {res['online_steps']} | {_fraction(res)} |")
        lines.append("")
    balanced = _balanced_replay_rows(runs)
    if balanced:
        lines += ["Balanced replay (Off2On): the offline share of the update batches, the mean priority w̃ "
                  "of the online and offline samples drawn, and the Q-ensemble's AUROC of taken against "
                  "uniform actions (plot: `balanced_replay.png`):", "", *balanced, ""]
    total = sum(r.wall_s for r in results)
    videos = copy_videos(out, runs, marks, report)
    judge = "the reward classifier" if plan.profile.use_classifier else "the twin"
    plots = [f"`success_vs_online_steps.png` (dots: evaluation of the learner's checkpoints; thin lines: "
             f"the actor's moving success over its last 20 training episodes, as {judge} judged them)"]
    if compare:
        plots.append("`compare_success.png` (per method: mean evaluation success over seeds, the band "
                     "from the lowest to the highest seed)")
    plots.append("`calibration.png` (Q against the Monte-Carlo return after pre-training)")
    lines += [f"Total wall-clock of the stages: {total / 60:.1f} min.", "",
              f"Plots: {', '.join(plots)}. Commands to repeat each stage: `commands.md`."
              + (f" Evaluation videos: {', '.join(f'`{v}`' for v in videos)}." if videos else ""), ""]
    (report / "results.md").write_text("\n".join(lines))

    commands = ["# Commands, in the order they ran", "",
                "Each stage's output folder holds DONE.json; delete it (or pass `--force STAGE`) to rerun "
                "the stage. The online stage's two commands run at the same time (learner first), and "
                "the pipeline stops them once the actor has recorded the configured online steps.", ""]
    for r in results:
        commands += [f"## {r.name}", "", "```bash", *r.commands, "```", ""]
    (report / "commands.md").write_text("\n".join(commands))

    if runs:
        plot_success(runs, marks, report / "success_vs_online_steps.png")
        if compare:
            plot_compare(runs, marks, report / "compare_success.png")
        plot_balanced_replay(runs, report / "balanced_replay.png")
    calibration = out / "pretrain" / "run" / "calibration.png"
    if calibration.is_file():
        shutil.copyfile(calibration, report / "calibration.png")

    summary = {
        "out": str(out),
        "profile": plan.profile.description,
        "stages": [{"name": r.name, "outcome": r.outcome, "wall_s": r.wall_s, "commands": r.commands,
                    "details": r.details} for r in results],
        "pretrain_eval": pretrain_eval and {k: pretrain_eval[k] for k in ("successes", "episodes", "success_rate")},
        "online": [{**run, "evals": {str(m): {k: res[k] for k in ("successes", "episodes", "success_rate",
                                                                    "online_steps")}
                                     for m, res in mark_results(Path(run["eval_dir"]), marks).items()}}
                   for run in runs],
        "total_wall_s": total,
    }
    (report / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return report
