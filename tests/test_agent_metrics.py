import json
import math

import numpy as np

from agent.metrics import MetricsWriter, read_metrics


def test_rows_are_flushed_jsonl_and_tensorboard_events_exist(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.log(3, {"loss": np.float32(0.5), "nan": float("nan"), "vector": np.zeros(3), "n": 2},
                   prefix="train")
        # Flushed before close: a crash would keep it.
        row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert row["step"] == 3 and math.isclose(row["train/loss"], 0.5)
    assert row["train/nan"] is None and row["train/n"] == 2 and "train/vector" not in row
    assert list((tmp_path / "tensorboard").iterdir())


def test_reading_skips_a_line_cut_short(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1}\n{"step": 2, "a"')
    assert read_metrics(path) == [{"step": 1, "a": 1}]
