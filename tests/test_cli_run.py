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
    # one row per protocol x line x episode x query x step x method: the seed and tuned protocols, held-out 4
    # episodes + 7 lines x 1 episode, 2 queries, steps 0..2 for the algorithm and scratch, step 0 for the three
    # classical references (computed once: the same rows under both protocols)
    assert set(observations.protocol) == {"seed", "tuned"}
    seed = observations[observations.protocol == "seed"]
    own = seed[seed.method == "fomaml"]
    assert len(own) == (4 + 7) * 2 * 3 and not own.reference.any()
    references = seed[seed.reference]
    assert references.groupby("method").size().to_dict() == {
        "all-foreground": 11 * 2, "otsu": 11 * 2, "otsu-texture": 11 * 2, "scratch": 11 * 2 * 3}
    assert len(observations) == 2 * (len(own) + len(references))
    tuned = observations[observations.protocol == "tuned"]
    columns = ["method", "line", "episode", "query", "step", "iou"]
    pd.testing.assert_frame_equal(
        tuned[tuned.reference][columns].reset_index(drop=True), references[columns].reset_index(drop=True)
    )
    assert set(observations.line) == {"A172", "BT-474", "BV-2", "Huh7", "MCF7", "SH-SY5Y", "SkBr3", "SK-OV-3"}
    assert set(observations[observations.role == "held-out"].line) == {"MCF7"}
    assert observations.iou.between(0, 1).all() and observations.predicted_foreground.between(0, 1).all()
    everything = seed[seed.method == "all-foreground"]
    assert (everything.predicted_foreground == 1).all()
    keys = ["line", "episode", "query"]  # the same query images under every method
    assert own[own.step == 0][keys].reset_index(drop=True).equals(everything[keys].reset_index(drop=True))
    episodes = pd.read_csv(folder / "episodes.csv.gz")
    assert len(episodes[episodes.method == "fomaml"]) == 2 * (4 + 7) * 3
    final = episodes[(episodes.step == 2) & (episodes.role == "held-out")]
    assert summary["heldout_iou"] == pytest.approx(final[(final.protocol == "seed") & (final.method == "fomaml")].iou.mean())
    assert summary["tuned"]["heldout_iou"] == pytest.approx(final[(final.protocol == "tuned") & (final.method == "fomaml")].iou.mean())
    assert summary["tuned"]["adaptation_rate"]["rate"] in (0.4, 0.1)
    log = pd.read_csv(folder / "train_log.csv")  # budget points at steps 0, 2 and the last (3)
    assert log.dropna(subset=["val_iou_n"]).step.tolist() == [0, 2, 3]
    scratch = final[(final.protocol == "seed") & (final.method == "scratch")]
    assert summary["references"]["scratch"]["heldout_iou"] == pytest.approx(scratch.iou.mean())
    assert summary["collapse"]["episodes"] == 4
    examples = dict(**__import__("numpy").load(folder / "examples.npz"))
    assert examples["image"].shape == examples["truth"].shape == examples["prediction"].shape == (2, 32, 32)
    out = capsys.readouterr().out
    assert "held-out IoU after 2 steps" in out and "otsu-texture (ref.)" in out and "scratch (ref.)" in out
    assert f"meta-training FLOPs (counted per configuration) {summary['train_flops'] / 1e9:.3g} GFLOP" in " ".join(out.split())

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
        a = pd.read_csv(whole.run_dir(config.run_id) / name).drop(columns="wall_s", errors="ignore")  # a clock
        b = pd.read_csv(interrupted.run_dir(config.run_id) / name).drop(columns="wall_s", errors="ignore")
        pd.testing.assert_frame_equal(a, b)
    a = torch.load(whole.run_dir(config.run_id) / "checkpoint.pt", weights_only=False)
    b = torch.load(interrupted.run_dir(config.run_id) / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(a["params"][name], b["params"][name]) for name in a["params"])


def test_diverging_loss_fails_the_run_with_one_line(synthetic_root, tmp_path, capsys):
    args = ["run", "--preset", "smoke", "--algo", "maml", "--data-root", str(synthetic_root), "--out", str(tmp_path),
            "--inner-lr", "1e12", "--loss", "bce"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "diverged" in err and "\n" not in err
    (summary,) = Store(tmp_path).summaries()
    assert summary["status"] == "failed" and "diverged" in summary["error"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--algo", "nope"], "unknown algorithm 'nope'; valid algorithms: anil, finetune, fomaml, maml, maml++, meta-sgd, reptile"),
        (["--holdout", "HeLa"], "unknown cell line 'HeLa'"),
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--k", "9"], "but k=9 support plus"),
        (["--config", "/nonexistent/x.toml"], "x.toml: config file not found"),
        (["--loss", "l2"], "unknown loss 'l2'; valid: dice, bce, bce_dice"),
        (["--opt", "epsilon=2"], "epsilon must be a number in (0, 1]"),
        (["--device", "gpu"], "invalid value for device: 'gpu' (must be cpu, cuda, cuda:N or auto)"),
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
    assert all(s["flops_per_step"] == [[0, 2, s["train_flops"] // 2]] and s["train_flops"] > 0 for s in summaries)
    manifests = [
        (tmp_path / "runs" / s["run_id"] / "manifests.json.gz").read_bytes() for s in summaries
    ]
    assert manifests[0] == manifests[1]  # paired: the same evaluation episodes
    columns = ["method", "line", "role", "episode", "query", "image_id", "step", "iou", "predicted_foreground"]
    references = [
        pd.read_csv(tmp_path / "runs" / s["run_id"] / "observations.csv.gz").query("reference")[columns] for s in summaries
    ]
    pd.testing.assert_frame_equal(references[0], references[1])  # the references do not depend on the algorithm
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
    assert set(pd.read_csv(tmp_path / "tables" / "budget_curves.csv").algo) == {"fomaml", "finetune"}  # smoke: every 2 steps
    assert len(pd.read_csv(tmp_path / "tables" / "budget_equal_flops.csv")) == 2 and "At equal FLOPs" in index


# -- what a newcomer hits (issue 10): errors, records that should not exist, attempts -------------------------------


@pytest.mark.parametrize("command", ["run", "sweep", "report"])
@pytest.mark.parametrize("where", ["a-file", "a-file/below", "/proc/fewshot-cellseg"])
def test_an_unwritable_out_is_one_line_naming_the_path(synthetic_root, tmp_path, capsys, command, where):
    (tmp_path / "a-file").write_text("")
    out = where if where.startswith("/") else str(tmp_path / where)
    grid = {"run": ["--algo", "reptile"], "sweep": ["--algos", "reptile", "--holdouts", "MCF7", "--k", "1"]}
    if command == "report":
        results = tmp_path / "results"
        execute(smoke(synthetic_root, algo="reptile", meta_steps=1), Store(results))
        argv = ["report", "--results", str(results), "--out", out]
    else:
        argv = [command, "--preset", "smoke", "--data-root", str(synthetic_root), "--out", out, *grid[command]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert out.split("/")[-1] in err or "a-file" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--data-root", "/nonexistent/livecell"], "LIVECell root not found"),
        (["--k", "9"], "but k=9 support plus"),
        (["--device", "cuda"], "no CUDA GPU is available"),
    ],
)
def test_a_run_that_never_started_leaves_no_record(synthetic_root, tmp_path, capsys, extra, message):
    if "--device" in extra and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = ["run", "--preset", "smoke", "--algo", "reptile", "--data-root", str(synthetic_root), "--out", str(tmp_path)]
    assert main(args + extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_resumed_run_counts_every_attempt_and_its_whole_training_time(synthetic_root, tmp_path):
    config = smoke(synthetic_root, algo="fomaml", meta_steps=4, checkpoint_every=1)
    store = Store(tmp_path)
    checkpoint = store.checkpoint

    def stop_at_step_two(config_, algo, state, log):
        checkpoint(config_, algo, state, log)
        if state.step == 2:
            (store.run_dir(config.run_id) / ".checkpoint.pt.x1.tmp").write_bytes(b"half")  # what kill -9 leaves
            (store.run_dir(config.run_id) / "train_log.csv.x2.tmp").write_bytes(b"half")
            raise KeyboardInterrupt

    store.checkpoint = stop_at_step_two
    with pytest.raises(KeyboardInterrupt):
        execute(config, store)
    trained = pd.read_csv(store.run_dir(config.run_id) / "train_log.csv").wall_s.iloc[-1]
    del store.checkpoint
    summary = execute(config, store)
    assert summary["resumed_from"] == 2 and summary["attempts"] == 2
    log = pd.read_csv(store.run_dir(config.run_id) / "train_log.csv")
    assert log.wall_s.is_monotonic_increasing and log.set_index("step").wall_s[2] == pytest.approx(trained)
    assert summary["wall_s"] >= log.wall_s.iloc[-1]  # training over both attempts, then evaluation
    assert not list(store.run_dir(config.run_id).glob("*.tmp"))
    assert summary["numerics_version"] == json.loads((store.run_dir(config.run_id) / "config.json").read_text())["numerics_version"]


def test_result_files_are_readable_by_everyone(synthetic_root, tmp_path):
    config = smoke(synthetic_root, algo="reptile", meta_steps=1)
    store = Store(tmp_path)
    execute(config, store)
    modes = {path.name: path.stat().st_mode & 0o777 for path in store.run_dir(config.run_id).iterdir()}
    assert set(modes.values()) == {0o644}, modes


def test_reptile_epsilon_reaches_the_algorithm_from_the_cli_and_a_toml_table(synthetic_root, tmp_path):
    from benchmark.runner import build

    base = ["run", "--preset", "default", "--algo", "reptile", "--holdout", "MCF7", "--print-config"]
    assert main(base + ["--opt", "epsilon=0.5"]) == 0
    config = resolve("default", algo="reptile", algo_options=[("epsilon", 0.5)])
    hparams = build(config).hparams()
    assert (hparams["epsilon"], hparams["outer_optimizer"], hparams["outer_lr"]) == (0.5, "sgd", 0.5)
    table = tmp_path / "reptile.toml"
    table.write_text("[algorithms.reptile]\nepsilon = 0.25\n")
    assert build(resolve("default", table, algo="reptile")).hparams()["epsilon"] == 0.25
    # and a run with it trains and evaluates
    summary = execute(smoke(synthetic_root, algo="reptile", meta_steps=2, algo_options=[("epsilon", 0.5)]), Store(tmp_path))
    assert summary["status"] == "completed"


def test_an_algorithm_table_error_names_its_file(tmp_path, capsys):
    table = tmp_path / "mine.toml"
    table.write_text("[algorithms.reptile]\nepsilon = 2.0\n")
    assert main(["run", "--preset", "smoke", "--algo", "reptile", "--config", str(table), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert f"{table}: [algorithms.reptile]: reptile: epsilon must be a number in (0, 1]" in err


def test_the_runs_torch_threads_are_set_recorded_and_restored(synthetic_root, tmp_path):
    before = torch.get_num_threads()
    config = smoke(synthetic_root, algo="reptile", meta_steps=1, threads=2)
    store = Store(tmp_path)
    execute(config, store)
    assert torch.get_num_threads() == before
    recorded = json.loads((store.run_dir(config.run_id) / "config.json").read_text())
    assert recorded["threads"] == 2
    assert smoke(synthetic_root, threads=1).run_id != smoke(synthetic_root, threads=2).run_id


def test_provenance_names_the_processor_and_its_kernels():
    """CPU results differ in their last bits between processors (AVX2 vs AVX-512 kernels), which meta-training
    can amplify into another answer: a run's provenance says which it ran on."""
    import os

    import torch

    from benchmark.machine import cpu_model
    from benchmark.store import provenance

    machine = provenance("cpu")["machine"]
    assert machine.startswith(cpu_model()) and f"({torch.backends.cpu.get_cpu_capability()} kernels)" in machine
    assert machine.endswith(f"{os.cpu_count()} CPUs")
