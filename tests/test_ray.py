"""`sweep --executor ray` (issue 15) on a loopback-only Ray cluster of 2 CPUs, started once for this module: the
same numbers as the local executor run for run, a killed worker's run retried from its checkpoint to the
uninterrupted numbers, one-line errors. Tests that need Ray skip, saying so, where it is not installed."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.config import resolve
from benchmark.execute import execute
from benchmark.store import Store

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray is not installed: pip install -e '.[ray]'"
)


@pytest.fixture(scope="module")
def cluster():
    """The address of a Ray head (2 CPUs) in its own process group, with its own temporary folder and token;
    stopped by its process group id at the end, so no other Ray on the machine is touched."""
    env = {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # advertise and listen on 127.0.0.1 only (the driver too)
        "RAY_AUTH_MODE": "token",  # what a user joining a cluster by its address sets, with the cluster's token
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)  # read by ray when this process first imports it
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--num-cpus", "2",
         "--port", str(port), "--temp-dir", temp, "--include-dashboard", "false", "--disable-usage-stats"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        for line in head.stdout:
            if "Ray runtime started" in line:
                break
        else:
            pytest.fail(f"ray start exited with {head.wait()}")
        threading.Thread(target=head.stdout.read, daemon=True).start()  # drain it
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()  # `ray start --block` stops the processes it started, then exits
        try:
            head.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):  # what is left of its process group, if anything
                os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
        for name, value in saved.items():
            os.environ.pop(name) if value is None else os.environ.update({name: value})


def smoke_args(root: Path, **extra: str) -> list[str]:
    args = ["sweep", "--preset", "smoke", "--holdouts", "MCF7", "--k", "1", "--data-root", str(root)]
    for name, value in extra.items():
        args += [f"--{name.replace('_', '-')}", value]
    return args


def records(out: Path, run_id: str, name: str = "episodes.csv.gz") -> pd.DataFrame:
    """A run's stored records, without the clock (the training log's wall_s)."""
    return pd.read_csv(out / "runs" / run_id / name).drop(columns="wall_s", errors="ignore")


@needs_ray
def test_a_sweep_on_ray_equals_the_local_executor_run_for_run(cluster, synthetic_root, tmp_path, capsys):
    args = smoke_args(synthetic_root, algos="reptile,finetune")
    assert main(args + ["--executor", "ray", "--address", cluster, "--out", str(tmp_path / "ray")]) == 0
    out = capsys.readouterr().out
    assert f"on the Ray cluster at {cluster}" in out and "2 runs completed, 0 failed" in out
    assert main(args + ["--jobs", "2", "--out", str(tmp_path / "local")]) == 0
    on_ray, local = Store(tmp_path / "ray").summaries(), Store(tmp_path / "local").summaries()
    assert [s["run_id"] for s in on_ray] == [s["run_id"] for s in local] and len(on_ray) == 2
    for summary in on_ray:
        run_id = summary["run_id"]
        pd.testing.assert_frame_equal(records(tmp_path / "ray", run_id), records(tmp_path / "local", run_id), check_exact=True)
        pd.testing.assert_frame_equal(
            records(tmp_path / "ray", run_id, "train_log.csv"), records(tmp_path / "local", run_id, "train_log.csv"), check_exact=True
        )

    capsys.readouterr()
    assert main(args + ["--executor", "ray", "--address", cluster, "--out", str(tmp_path / "ray")]) == 0
    assert "2 already finished, 0 to run" in capsys.readouterr().out  # a rerun skips finished runs


def _kill_after_first_checkpoint(folder: Path, run_id: str, killed: dict) -> None:
    """Wait for the run's first checkpoint, then SIGKILL the Ray worker computing it (its process title names
    the run)."""
    deadline = time.monotonic() + 120
    while not (folder / "checkpoint.pt").is_file():
        if time.monotonic() > deadline:
            return
        time.sleep(0.01)
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            title = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if title.startswith(f"ray::{run_id}"):
            os.kill(int(proc.name), signal.SIGKILL)
            killed.update(pid=int(proc.name), logged=len(pd.read_csv(folder / "train_log.csv")))
            return


@needs_ray
@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="finds the worker's process through /proc (Linux)")
def test_a_killed_worker_is_retried_from_its_checkpoint_to_the_uninterrupted_numbers(cluster, synthetic_root, tmp_path, capsys):
    settings = dict(algo="fomaml", holdout="MCF7", k=1, data_root=str(synthetic_root), meta_steps=30, checkpoint_every=1)
    config = resolve("smoke", **settings)
    out = tmp_path / "ray"
    killed: dict = {}
    killer = threading.Thread(target=_kill_after_first_checkpoint, args=(out / "runs" / config.run_id, config.run_id, killed))
    killer.start()
    args = smoke_args(synthetic_root, algos="fomaml", meta_steps="30", checkpoint_every="1")
    code = main(args + ["--executor", "ray", "--address", cluster, "--out", str(out), "--retries", "1"])
    killer.join()
    printed = capsys.readouterr().out
    assert killed, "the run finished before its worker could be killed"
    assert code == 0, printed
    assert re.search(rf"retry\s+{config.run_id}: attempt 2 of 2 after WorkerCrashedError", printed), printed
    resumed = int(re.search(r"resumed from meta-step (\d+)", printed).group(1))
    assert 1 <= resumed <= killed["logged"] + 1  # the last checkpoint before the kill (or one written as it died)
    assert Store(out).summary(config.run_id)["attempts"] == 2

    reference = tmp_path / "uninterrupted"
    execute(config, Store(reference))  # in this process, on one torch thread (conftest), as the worker ran
    for name in ("episodes.csv.gz", "train_log.csv"):
        pd.testing.assert_frame_equal(records(out, config.run_id, name), records(reference, config.run_id, name), check_exact=True)
    assert Store(out).summary(config.run_id)["heldout_iou"] == Store(reference).summary(config.run_id)["heldout_iou"]


@needs_ray
def test_a_results_folder_a_worker_cannot_write_stops_the_sweep_at_once(cluster, tmp_path):
    from benchmark.errors import UserError
    from benchmark.executors.ray_cluster import RayExecutor

    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the results folder's parent should be: no node can make runs/ there
    executor = RayExecutor(blocker / "results", force=False, address=cluster, cpus_per_run=1, gpus_per_run=0, retries=0)
    with pytest.raises(UserError, match=r"results folder .*/file/results is not writable on the Ray node 127\.0\.0\.1 \(Not a directory\)"):
        with executor:
            pass


def test_without_ray_the_executor_is_one_line_naming_the_extra(synthetic_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(smoke_args(synthetic_root, algos="fomaml") + ["--executor", "ray", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install -e '.[ray]'" in err and "\n" not in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--executor", "ray", "--jobs", "2"], "--jobs is an option of --executor local"),
        (["--address", "auto"], "--address is an option of --executor ray"),
        (["--retries", "1"], "--retries is an option of --executor ray"),
        (["--executor", "ray", "--device", "cuda"], "--device cuda on Ray needs --gpus-per-run"),
        (["--executor", "ray", "--gpus-per-run", "1", "--device", "cpu"], "--gpus-per-run 1 reserves GPUs"),
        (["--executor", "ray", "--cpus-per-run", "0"], "invalid value for --cpus-per-run: 0"),
        (["--executor", "ray", "--cpus-per-run", "2", "--threads", "1"], "--threads 1 and --cpus-per-run 2 differ"),
    ],
)
def test_flags_that_do_not_fit_the_executor_are_one_line(synthetic_root, tmp_path, capsys, extra, message):
    assert main(smoke_args(synthetic_root, algos="fomaml") + ["--out", str(tmp_path)] + extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
