"""Issue 17's "no silent waits" and "small untruths": the one progress helper (a bar on a terminal,
plain periodic lines elsewhere), honest rates, argument/path checks before heavy imports, the
calibration plot's episode count, refused stage names, the classifier hint, `dataset info`."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from franka_rl.cli import main
from robot_env.progress import LineProgress, format_rate, progress

REPO = Path(__file__).resolve().parent.parent


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------ the helper


def test_off_a_terminal_progress_writes_periodic_plain_lines():
    stream, clock = io.StringIO(), FakeClock()
    bar = LineProgress(total=100, desc="encoding frames", unit="frame", stream=stream, interval_s=10, clock=clock)
    for _ in range(100):
        clock.now += 0.5  # 2 frames/s: a line every 20 frames, then the final one
        bar.update(1)
        bar.set_postfix(loss="0.5")
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 5
    assert lines[0] == "encoding frames: 20/100 frame (20%), 2.00 frames/s, elapsed 10 s, ETA 40 s, loss=0.5"
    assert lines[-1].startswith("encoding frames: 100/100 frame (100%), 2.00 frames/s, elapsed 50 s")


def test_progress_is_tqdm_on_a_terminal_and_lines_elsewhere():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    from tqdm import tqdm

    on_terminal = progress(total=3, desc="x", stream=Terminal())
    assert isinstance(on_terminal, tqdm)
    on_terminal.close()
    assert isinstance(progress(total=3, desc="x", stream=io.StringIO()), LineProgress)
    silent = progress(range(3), disable=True)
    assert list(silent) == [0, 1, 2]


def test_every_command_uses_the_one_helper_not_tqdm_directly():
    offenders = [str(path.relative_to(REPO)) for package in ("agent", "reward_classifier", "franka_rl", "teleop", "sim")
                 for path in sorted((REPO / package).rglob("*.py")) if "from tqdm" in path.read_text()]
    assert offenders == []


@pytest.mark.parametrize(("count", "seconds", "expected"), [
    (50, 503, "10.1 s/step"),       # the "50 steps in 503 s (0 steps/s)"
    (50, 250, "0.20 steps/s"),
    (1, 1, "1.00 steps/s"),
    (12_345, 10, "1234 steps/s"),
    (2, 300, "2 min 30 s/step"),
    (0, 10, "0 steps/s"),
])
def test_rates_keep_sensible_precision(count, seconds, expected):
    assert format_rate(count, seconds, "step") == expected


# ------------------------------------------------------------------ fast argument errors


@pytest.mark.parametrize("argv", [
    ["pretrain", "--data", "missing/"],
    ["eval", "--checkpoint", "missing/"],
])
def test_path_errors_answer_before_jax_is_imported(argv, tmp_path):
    # A fresh interpreter: does the command import JAX (seconds) before it checks the path?
    code = ("import sys; from franka_rl.cli import main; rc = main(sys.argv[1:]); "
            "assert 'jax' not in sys.modules, 'jax was imported'; sys.exit(rc)")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert "missing" in result.stderr and "Traceback" not in result.stderr
    assert elapsed < 10  # generous for a loaded CI machine; the no-JAX assertion is the real check


def test_pretrain_shares_the_minari_prefix_with_the_loader():
    from agent.data.sources import MINARI_PREFIX
    from franka_rl.commands import pretrain

    assert pretrain.MINARI_PREFIX == MINARI_PREFIX


# --------------------------------------------------------------------------- small untruths


@pytest.mark.parametrize("command", ["pipeline", "demo"])
def test_unknown_stage_names_are_refused_with_the_valid_ones(command, tmp_path, capsys):
    assert main([command, "--out", str(tmp_path / "p"), "--stages", "foo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "unknown stage 'foo'" in err and "demos, offline, rewards, classifier, pretrain" in err
    assert not (tmp_path / "p").exists()  # nothing ran, no empty report
    assert main([command, "--out", str(tmp_path / "p"), "--force", "pretrian"]) == 2
    assert "--force: unknown stage 'pretrian'" in capsys.readouterr().err


def test_stage_selectors_of_compared_runs_are_accepted():
    from franka_rl.pipeline import check_stage_selectors

    check_stage_selectors(["online.wsrl.s0", "eval_online.rlpd.s1", "pretrain", "eval_pretrain"], "--stages")


def test_calibration_title_counts_the_episodes_drawn():
    from agent.calibration import episodes_title

    def runs(count):
        return {"Cal-QL": ([np.zeros(3)] * count, [np.zeros(3)] * count)}

    assert episodes_title(runs(1), 3) == "Q and G along the 1 held-out episode"
    assert episodes_title(runs(2), 3) == "Q and G along all 2 held-out episodes"
    assert episodes_title(runs(5), 3, "training") == "Q and G along 3 of 5 training episodes"


def test_calibration_plot_titles_count_what_is_drawn(tmp_path, monkeypatch):
    import matplotlib.axes
    import matplotlib.figure

    from agent.calibration import plot_calibration

    titles: list[str] = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, text, *a, **k: titles.append(text))
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle", lambda self, text, *a, **k: titles.append(text))
    curves = [np.linspace(0, 1, 4)] * 2
    plot_calibration({"CQL": (curves, curves)}, tmp_path / "c.png", episodes_to_show=3, title="t",
                     episode_set="training")
    assert titles == ["training steps", "Q and G along all 2 training episodes", "t"]


def test_classifier_hint_names_the_directory(tmp_path):
    from reward_classifier.saved_model import ClassifierLoadError, read_metadata

    with pytest.raises(ClassifierLoadError) as caught:
        read_metadata(tmp_path / "model")
    assert f"--out {tmp_path / 'model'}`" in str(caught.value) and "{directory}" not in str(caught.value)


def test_dataset_info_shows_shapes_and_keeps_the_sheet_out_of_the_dataset(tmp_path, monkeypatch, capsys):
    from agent.data.episodes import Episode, EpisodeStore

    data = tmp_path / "demos"
    store = EpisodeStore(data, create=True)
    rng = np.random.default_rng(0)
    for _ in range(2):
        store.write(Episode(
            observations={"state": rng.normal(size=(4, 19)).astype(np.float32),
                          "wrist_1": rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)},
            actions=np.zeros((3, 6), np.float32), rewards=np.zeros(3, np.float32),
            terminated=np.zeros(3, bool), truncated=np.array([False, False, True]), intervened=np.zeros(3, bool),
            metadata={"task": "peg_insertion", "source": "teleop"}))
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in data.iterdir())
    assert main(["dataset", "info", str(data)]) == 0
    out = capsys.readouterr().out
    assert "state (19,) float32, wrist_1 (16, 16, 3) uint8" in out
    assert "action             (6,) float32" in out
    assert sorted(p.name for p in data.iterdir()) == before  # nothing written into the dataset
    sheet = Path("runs") / "dataset_info" / "demos" / "contact_sheet.png"
    assert (tmp_path / sheet).is_file() and f"contact sheet      {sheet}" in out
    assert main(["dataset", "info", str(data), "--sheet", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").is_file()


def test_the_deprecated_trust_flag_is_hidden_from_help(capsys):
    with pytest.raises(SystemExit):
        main(["dataset", "import-serl", "--help"])
    help_text = capsys.readouterr().out
    assert "--trust-pickle" in help_text and "--trusted" not in help_text
