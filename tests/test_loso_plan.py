"""The LOSO runner's bookkeeping, without training: fold selection, SLURM array specs, fold states
(what a rerun skips and what it runs again). The end-to-end runs are in test_loso.py (slow)."""

from __future__ import annotations

import pytest

from mellm.errors import ConfigError
from mellm.loso.launchers import LaunchConfig, fold_command, slurm_scripts
from mellm.loso.plan import compress, mark_dead, parse_folds, pending, read_state, write_state


def test_fold_selection_and_its_array_syntax():
    known = list(range(68))
    assert parse_folds("1,5-9", known) == [1, 5, 6, 7, 8, 9]
    assert parse_folds(None, known) == known and parse_folds("all", known) == known
    assert compress([9, 0, 1, 2, 5, 7, 8, 8]) == "0-2,5,7-9"
    assert parse_folds(compress([3, 4, 10, 60, 61, 62]), known) == [3, 4, 10, 60, 61, 62]
    with pytest.raises(ConfigError, match=r"fold\(s\) 68-70 do not exist"):
        parse_folds("60-70", known)
    with pytest.raises(ConfigError, match="runs backwards"):
        parse_folds("9-5", known)
    with pytest.raises(ConfigError, match="'x' is not a fold number"):
        parse_folds("1,x", known)


def test_a_rerun_runs_what_is_not_done(tmp_path):
    write_state(tmp_path, 0, state="done")
    (tmp_path / "fold_0" / "predict").mkdir(parents=True)
    (tmp_path / "fold_0" / "predict" / "predictions.jsonl").write_text("")
    write_state(tmp_path, 1, state="failed", error="boom")
    write_state(tmp_path, 2, state="running")  # killed mid-fold
    write_state(tmp_path, 4, state="done")  # says done, but its predictions are gone
    assert pending(tmp_path, [0, 1, 2, 3, 4]) == [1, 2, 3, 4]
    mark_dead(tmp_path, 2, -9)
    assert read_state(tmp_path, 2)["state"] == "failed" and "signal 9" in read_state(tmp_path, 2)["error"]
    mark_dead(tmp_path, 1, 1)  # an outcome already recorded is kept
    assert read_state(tmp_path, 1)["error"] == "boom"
    (tmp_path / "fold_3").mkdir()
    (tmp_path / "fold_3" / "fold.json").write_text('{"fold": 3, "sta')  # cut off while written
    assert read_state(tmp_path, 3) is None


def test_slurm_scripts_hold_one_array_task_per_fold(tmp_path):
    cfg = LaunchConfig(slurm_options={"partition": "gpu", "gres": "gpu:a100:1"}, slurm_parallel=4,
                       slurm_setup="module load cuda\nsource /opt/venv/bin/activate", python="/opt/venv/bin/python")
    folds_script, pool_script = slurm_scripts(tmp_path, [0, 1, 2, 7, 9, 10], cfg)
    lines = folds_script.read_text().splitlines()
    assert "#SBATCH --array=0-2,7,9-10%4" in lines
    assert "#SBATCH --gres=gpu:a100:1" in lines and "#SBATCH --partition=gpu" in lines
    assert lines.index("module load cuda") < len(lines) - 1
    expected = fold_command(tmp_path, "${SLURM_ARRAY_TASK_ID}", "/opt/venv/bin/python")
    assert lines[-1] == "exec " + " ".join(expected[:-1]) + ' "${SLURM_ARRAY_TASK_ID}"'
    pool = pool_script.read_text()
    assert "loso-pool" in pool and "gres" not in pool and "#SBATCH --partition=gpu" in pool
