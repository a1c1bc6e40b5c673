"""`run` and `sweep` end to end on the smoke preset: records, skipping, --force, resume, and one-line errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from benchmark.cli import main
from benchmark.config import resolve
from benchmark.execute import execute
from benchmark.store import Store


def smoke(synthetic_root, **overrides):
    return resolve("smoke", data_root=str(synthetic_root), **overrides)


def test_run_writes_complete_tidy_records_and_skips_a_repeat(synthetic_root, tmp_path, capsys):
    args = ["run", "--preset", "smoke", "--algo", "fomaml", "--holdout", "mcf7", "--data-root", str(synthetic_root), "--out", str(tmp_path)]
    assert main(args) == 0
    config = smoke(synthetic_root, algo="fomaml", holdout="MCF7")
    folder = tmp_path / "runs" / config.run_id
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["passes"] == 3 * (2 + 1)  # meta-steps x (n + 1) passes over the meta-batch
    observations = pd.read_csv(folder / "observations.csv.gz")
    # one row per line x episode x query x step: held-out 4 episodes + 7 lines x 1 episode, 2 queries, steps 0..2
    assert len(observations) == (4 + 7) * 2 * 3
    assert set(observations.line) == {"A172", "BT-474", "BV-2", "Huh7", "MCF7", "SH-SY5Y", "SkBr3", "SK-OV-3"}
    assert set(observations[observations.role == "held-out"].line) == {"MCF7"}
    assert observations.iou.between(0, 1).all()
    episodes = pd.read_csv(folder / "episodes.csv.gz")
    assert len(episodes) == (4 + 7) * 3
    final = episodes[(episodes.step == 2) & (episodes.role == "held-out")]
    assert summary["heldout_iou"] == pytest.approx(final.iou.mean())
    examples = dict(**__import__("numpy").load(folder / "examples.npz"))
    assert examples["image"].shape == examples["truth"].shape == examples["prediction"].shape == (2, 32, 32)
    assert "held-out IoU after 2 steps" in capsys.readouterr().out

    mtime = (folder / "summary.json").stat().st_mtime_ns
    assert main(args) == 0
    assert "already finished" in capsys.readouterr().out
    assert (folder / "summary.json").stat().st_mtime_ns == mtime
    assert main(args + ["--force"]) == 0
    assert (folder / "summary.json").stat().st_mtime_ns != mtime
    assert pd.read_csv(folder / "episodes.csv.gz").equals(episodes)  # same seed, same numbers


def test_interrupted_run_resumes_to_the_uninterrupted_result(synthetic_root, tmp_path):
    config = smoke(synthetic_root, algo="maml", meta_steps=4, checkpoint_every=2)
    whole = Store(tmp_path / "whole")
    execute(config, whole)

    interrupted = Store(tmp_path / "interrupted")
    checkpoint = interrupted.checkpoint

    def stop_after_first_checkpoint(config_, algo, state, log):
        checkpoint(config_, algo, state, log)
        raise KeyboardInterrupt

    interrupted.checkpoint = stop_after_first_checkpoint
    with pytest.raises(KeyboardInterrupt):
        execute(config, interrupted)
    assert interrupted.summary(config.run_id) is None  # nothing that looks finished
    del interrupted.checkpoint
    summary = execute(config, interrupted)
    assert summary["resumed_from"] == 2
    for name in ("episodes.csv.gz", "train_log.csv"):
        a = pd.read_csv(whole.run_dir(config.run_id) / name)
        b = pd.read_csv(interrupted.run_dir(config.run_id) / name)
        pd.testing.assert_frame_equal(a, b)
    a = torch.load(whole.run_dir(config.run_id) / "checkpoint.pt", weights_only=False)
    b = torch.load(interrupted.run_dir(config.run_id) / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(a["params"][name], b["params"][name]) for name in a["params"])


def test_diverging_loss_fails_the_run_with_one_line(synthetic_root, tmp_path, capsys):
    args = ["run", "--preset", "smoke", "--algo", "maml", "--data-root", str(synthetic_root), "--out", str(tmp_path),
            "--inner-lr", "1e12", "--loss", "bce"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: meta-training diverged") and "\n" not in err
    (summary,) = Store(tmp_path).summaries()
    assert summary["status"] == "failed" and "diverged" in summary["error"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--algo", "nope"], "unknown algorithm 'nope'; valid algorithms: finetune, fomaml, maml, reptile"),
        (["--holdout", "HeLa"], "unknown cell line 'HeLa'"),
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--k", "9"], "MCF7 has 6 test images"),
        (["--config", "/nonexistent/x.toml"], "x.toml: config file not found"),
        (["--loss", "l2"], "unknown loss 'l2'; valid: dice, bce, bce_dice"),
        (["--opt", "epsilon=2"], "epsilon must be a number in (0, 1]"),
        (["--device", "gpu"], "invalid device 'gpu'"),
        (["--seed", "-1"], "invalid value for seed: -1"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(synthetic_root, tmp_path, capsys, extra, message):
    args = ["run", "--preset", "smoke", "--algo", "reptile", "--data-root", str(synthetic_root), "--out", str(tmp_path)]
    assert main(args + extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_typed_settings_in_a_config_file_are_checked(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("holdout = 5\n")
    assert main(["run", "--preset", "smoke", "--config", str(bad), "--print-config"]) == 2
    assert "bad.toml: invalid value for holdout: 5 (expected str)" in capsys.readouterr().err


def test_force_starts_afresh_even_if_interrupted_before_its_first_checkpoint(synthetic_root, tmp_path):
    config = smoke(synthetic_root, algo="fomaml")
    store = Store(tmp_path)
    execute(config, store)
    store.checkpoint = lambda *args: (_ for _ in ()).throw(KeyboardInterrupt)  # interrupted at once
    with pytest.raises(KeyboardInterrupt):
        execute(config, store, force=True)
    assert not (store.run_dir(config.run_id) / "checkpoint.pt").exists()
    assert store.resume_point(config) is None  # nothing left to resume from the previous run


def test_sweep_runs_a_grid_on_identical_episodes_and_resumes(synthetic_root, tmp_path, capsys):
    args = ["sweep", "--preset", "smoke", "--algos", "fomaml,finetune", "--holdouts", "BV-2", "--k", "1",
            "--data-root", str(synthetic_root), "--out", str(tmp_path), "--meta-steps", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "estimated time:" in out and "sweep finished in" in out
    summaries = Store(tmp_path).summaries()
    assert sorted(s["config"]["algo"] for s in summaries) == ["finetune", "fomaml"]
    manifests = [
        (tmp_path / "runs" / s["run_id"] / "manifests.json.gz").read_bytes() for s in summaries
    ]
    assert manifests[0] == manifests[1]  # paired: the same evaluation episodes
    capsys.readouterr()
    assert main(args) == 0
    assert "2 already finished, 0 to run" in capsys.readouterr().out
    assert main(args + ["--holdouts", "bv2,BV-2"]) == 0  # a line named twice is one run
    assert "2 runs, 2 already finished" in capsys.readouterr().out

    # the report reads what the store wrote
    assert main(["report", "--results", str(tmp_path)]) == 0
    index = (tmp_path / "report.md").read_text()
    assert "fomaml" in index and "finetune" in index
    assert (tmp_path / "tables" / "leave_one_line_out.csv").is_file()
    assert (tmp_path / "plots" / "held_out_bars.png").stat().st_size > 0
