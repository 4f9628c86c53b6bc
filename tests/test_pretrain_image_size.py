"""`pretrain` refuses data whose frames differ from env.image_height/width, in one line, before
it builds an agent or writes anything."""

import numpy as np
import pytest

from agent.data.episodes import EpisodeStore
from agent.data.synthetic import synthetic_episode
from agent.pretrain import DatasetError, check_image_size
from franka_rl.cli import main


@pytest.fixture
def frames_16(tmp_path):
    store = EpisodeStore(tmp_path / "demos", create=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        store.write(synthetic_episode(rng, 5, image_size=16, episode_index=i, success=i == 0))
    return tmp_path / "demos"


def test_pretrain_refuses_frames_of_another_size(frames_16, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["pretrain", "--data", str(frames_16), "--out", str(out), "--no-progress",
                 "env.image_height=32", "env.image_width=16", "pretrain.steps=1", "task.max_episode_steps=10"])
    assert code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1
    assert "camera 'wrist_1' in episode 0 is 16x16" in lines[0] and "32x16" in lines[0]
    assert "env.image_height=16 env.image_width=16" in lines[0]
    assert not out.exists()  # refused before the run directory or an agent was made


def test_matching_and_unused_cameras_pass(frames_16):
    episodes = list(EpisodeStore(frames_16).episodes())
    check_image_size(episodes, ["wrist_1", "wrist_2"], 16, 16)
    check_image_size(episodes, ["wrist_3"], 128, 128)  # not in the data: nothing to compare
    with pytest.raises(DatasetError, match="wrist_2"):
        check_image_size(episodes, ["wrist_2"], 16, 17)
