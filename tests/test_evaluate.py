"""`evaluate`: a finished smoke-preset run scored on other data with the run's own protocol; records, the
small-set rule, instance AP on whole images, one-line errors, and the real sample."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_livecell import write_dataset
from test_predict import smoke_run  # noqa: F401  (the module-scoped fixture: a finished smoke-preset run)

from benchmark.cli import main
from benchmark.observations import compact


def evaluate(smoke_run, *extra):  # noqa: F811
    results, run_id = smoke_run
    return main(["evaluate", run_id, "--results", str(results), *extra])


def records(smoke_run, tag):  # noqa: F811
    results, run_id = smoke_run
    folder = results / "runs" / run_id / "evaluations" / tag
    return pd.read_csv(folder / "episodes.csv.gz"), json.loads((folder / "summary.json").read_text()), folder


@pytest.fixture(scope="module")
def two_per_line(tmp_path_factory):
    """MCF7 and BT474 with two annotated images per split: fewer than k + queries, so the small-set rule applies."""
    return write_dataset(tmp_path_factory.mktemp("two") / "livecell", lines=("MCF7", "BT474"), per_split=2, width=96, height=80, cells=14)


def test_on_its_own_data_evaluate_reproduces_the_runs_records(smoke_run, synthetic_root):  # noqa: F811
    results, run_id = smoke_run
    assert evaluate(smoke_run, "--data-root", str(synthetic_root), "--holdout", "MCF7", "--tag", "own") == 0
    ours, summary, _ = records(smoke_run, "own")
    theirs = pd.read_csv(results / "runs" / run_id / "episodes.csv.gz")
    theirs = theirs[theirs.role == "held-out"].reset_index(drop=True)
    assert set(ours.split) == {"test"} and set(ours.evaluated_on) == {"own"}
    assert ours[theirs.columns].equals(theirs)  # same episodes, same adaptation, same numbers
    assert {(row["line"], row["protocol"]) for row in summary["lines"]} == {("MCF7", p) for p in set(theirs.protocol)}
    assert summary["lines"][0]["episodes"] == 4


def test_small_sets_give_records_per_line_reproducibly(smoke_run, two_per_line):  # noqa: F811
    for tag in ("first", "second"):
        assert evaluate(smoke_run, "--data-root", str(two_per_line), "--episodes", "3", "--tag", tag) == 0
    first, summary, folder = records(smoke_run, "first")
    second, _, _ = records(smoke_run, "second")
    assert set(first.line) == {"MCF7", "BT-474"}
    assert dict(zip(first.line, first.role)) == {"MCF7": "held-out", "BT-474": "seen"}
    assert first.groupby("line").episode.nunique().tolist() == [3, 3] and sorted(first.step.unique()) == [0, 1, 2]
    assert set(first.protocol) == {"seed", "tuned"}  # the smoke run selected an adaptation rate on validation data
    assert set(first.run_id) == {smoke_run[1]}  # rows name the run they score, whatever --k or data the evaluation took
    crops = pd.read_csv(folder / "observations.csv.gz")  # per crop, kept beside (not committed); per image, what the report reads
    images = pd.read_csv(folder / "images.csv.gz").set_index(["protocol", "method", "line", "image_id", "step"])
    expected = compact(crops).groupby(["protocol", "method", "line", "image_id", "step"]).iou.agg(["mean", "size"])
    assert len(images) == len(expected) and (images.crops == expected["size"].reindex(images.index)).all()
    assert np.allclose(images.iou, expected["mean"].reindex(images.index), rtol=1e-6, atol=0)  # to float32's precision
    assert first.drop(columns="evaluated_on").equals(second.drop(columns="evaluated_on"))
    manifests = json.loads(__import__("gzip").decompress((folder / "manifests.json.gz").read_bytes()))
    for manifest in manifests:  # k = 3 support and 2 query crops from two images: never one image for both
        assert not {i for i, _ in manifest["support"]} & {i for i, _ in manifest["query"]}
    assert len(summary["lines"]) == 4 and {row["split"] for row in summary["lines"]} == {"test"}  # 2 lines x 2 protocols


def test_whole_images_add_instance_ap_beside_its_reference(smoke_run, two_per_line):  # noqa: F811
    assert evaluate(smoke_run, "--data-root", str(two_per_line), "--episodes", "2", "--k", "1", "--whole-images") == 0
    episodes, summary, folder = records(smoke_run, "livecell-k1-whole")
    ap = pd.read_csv(folder / "instances.csv")
    own = ap[ap.method == "reptile"]
    assert len(own) == 8 and set(own.protocol) == {"seed", "tuned"} and ap[["ap50", "ap", "ap50_truth_mask", "ap_truth_mask"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (ap.ap <= ap.ap50).all()
    references = ap[ap.method != "reptile"]  # the classical references' masks through the same instance rule, once
    assert set(references.method) == {"all-foreground", "otsu", "otsu-texture"} and set(references.protocol) == {"seed"}
    assert len(references) == 3 * 4
    for line in summary["lines"]:
        theirs = references[references.line == line["line"]]
        for name, reference in line["references"].items():
            if name != "scratch":
                assert reference["ap50"] == pytest.approx(theirs[theirs.method == name].ap50.mean())
        assert line["ap50"] == pytest.approx(own[(own.line == line["line"]) & (own.protocol == line["protocol"])].ap50.mean())
    assert summary["crop"] is None and summary["k"] == 1
    assert summary["instances"] == {"split": True, "min_distance": 4, "sigma": 1.0, "min_radius": 1.0, "min_size": 10}
    assert {"ap50", "ap", "ap50_truth_mask"} <= set(summary["lines"][0])


def test_bad_requests_are_one_line_errors(smoke_run, two_per_line, tmp_path, capsys):  # noqa: F811
    results, run_id = smoke_run
    cases = [
        (["evaluate", "nope", "--results", str(results), "--data-root", str(two_per_line)], "'nope' matches no run"),
        (["evaluate", run_id, "--results", str(results), "--data-root", str(tmp_path)], "no annotations/ folder"),
        (["evaluate", run_id, "--results", str(results), "--data-root", str(two_per_line), "--holdout", "BV2"], "no annotated images of BV-2"),
        (["evaluate", run_id, "--results", str(results), "--data-root", str(two_per_line), "--k", "0"], "--k must be >= 1"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def test_the_real_sample_gives_records_for_mcf7_and_bt474_reproducibly(smoke_run, sample_root, capsys):  # noqa: F811
    for tag in ("real", "real-again"):
        assert evaluate(smoke_run, "--data-root", str(sample_root), "--episodes", "4", "--tag", tag) == 0
    first, summary, _ = records(smoke_run, "real")
    again, _, _ = records(smoke_run, "real-again")
    assert set(first.line) == {"MCF7", "BT-474"} and set(first.split) == {"val"}
    assert first.drop(columns="evaluated_on").equals(again.drop(columns="evaluated_on"))
    assert summary["left_out"] == ["Huh7"]  # one annotated image
    assert "Huh7: left out, one val image" in capsys.readouterr().out
    assert evaluate(smoke_run, "--data-root", str(sample_root), "--holdout", "Huh7") == 2
    assert "Huh7 has 1 val image; an episode needs at least two" in capsys.readouterr().err


def test_report_lists_evaluations_on_other_datasets(smoke_run, two_per_line, tmp_path):  # noqa: F811
    from benchmark.report import build_report

    results, _ = smoke_run
    assert evaluate(smoke_run, "--data-root", str(two_per_line), "--episodes", "2", "--tag", "for-report") == 0
    _, summary, _ = records(smoke_run, "for-report")
    written = build_report(results, tmp_path)
    table = pd.read_csv(tmp_path / "tables" / "evaluations.csv")
    ours = table[table.evaluated_on == "for-report"].set_index(["line", "protocol"])
    for line in summary["lines"]:
        assert ours.loc[(line["line"], line["protocol"]), "iou"] == pytest.approx(line["iou"], rel=1e-5)
        assert ours.loc[(line["line"], line["protocol"]), "role"] == line["role"]
    index = (tmp_path / "report.md").read_text()
    assert "## Evaluations on other datasets" in index and "tables/evaluations.md" in index
    assert tmp_path / "tables" / "evaluations.md" in written


def test_the_summary_scores_the_algorithm_apart_from_the_references(smoke_run, two_per_line):  # noqa: F811
    """Each line's IoU is the algorithm's own over its query images, never mixed with the references' rows,
    which stand beside it with their own scores on the same episodes."""
    assert evaluate(smoke_run, "--data-root", str(two_per_line), "--episodes", "3", "--tag", "apart") == 0
    _, summary, folder = records(smoke_run, "apart")
    rows = pd.read_csv(folder / "observations.csv.gz")
    last = rows[rows.step == rows.step.max()]
    for line in summary["lines"]:
        here = rows[(rows.line == line["line"]) & (rows.protocol == line["protocol"])]
        final = here[here.step == here[~here.reference].step.max()]
        own = final[final.method == "reptile"].groupby("image_id").iou.agg(["mean", "size"])
        assert line["iou"] == pytest.approx((own["mean"] * own["size"]).sum() / own["size"].sum())
        assert 0 <= line["iou_ci"][0] <= line["iou"] <= line["iou_ci"][1] <= 1
        assert set(line["references"]) == {"all-foreground", "otsu", "otsu-texture", "scratch"}
        for name, reference in line["references"].items():
            theirs = here[(here.method == name) & (here.step == here[here.method == name].step.max())]
            assert reference["iou"] == pytest.approx(theirs.iou.mean())
    assert set(last.method) >= {"reptile", "scratch"}


def test_sweep_evaluates_each_run_where_the_dataset_annotates_its_held_out_line(synthetic_root, two_per_line, tmp_path, capsys):
    """`sweep --evaluate-on ROOT`: a run held out on a line ROOT annotates is evaluated there after it finishes (as
    `evaluate RUN --data-root ROOT --holdout LINE` would); one held out elsewhere is not; a rerun finds nothing to
    do; a finished run not yet evaluated is evaluated without rerunning it."""
    results = tmp_path / "results"
    grid = ["sweep", "--preset", "smoke", "--algos", "reptile", "--k", "1", "--data-root", str(synthetic_root), "--out", str(results)]
    assert main([*grid, "--holdouts", "A172"]) == 0  # finished before anyone asked for the evaluation
    capsys.readouterr()
    assert main([*grid, "--holdouts", "A172,MCF7", "--evaluate-on", str(two_per_line)]) == 0
    out = capsys.readouterr().out
    assert "1 already finished, 1 to run" in " ".join(out.split())
    runs = {path.name.split("-")[1]: path for path in (results / "runs").iterdir()}
    summary = json.loads((runs["MCF7"] / "evaluations" / "livecell" / "summary.json").read_text())
    assert [row["line"] for row in summary["lines"]] == ["MCF7", "MCF7"] and summary["lines"][0]["role"] == "held-out"
    assert not (runs["A172"] / "evaluations").exists()  # two_per_line annotates MCF7 and BT-474 only
    before = (runs["MCF7"] / "summary.json").read_text()
    assert main([*grid, "--holdouts", "A172,MCF7", "--evaluate-on", str(two_per_line)]) == 0
    assert "0 to run, 0 finished ones to evaluate" in " ".join(capsys.readouterr().out.split())
    assert (runs["MCF7"] / "summary.json").read_text() == before
    (runs["MCF7"] / "evaluations" / "livecell" / "summary.json").unlink()
    assert main([*grid, "--holdouts", "MCF7", "--evaluate-on", str(two_per_line)]) == 0
    assert "1 finished ones to evaluate" in " ".join(capsys.readouterr().out.split())
    assert (runs["MCF7"] / "evaluations" / "livecell" / "summary.json").is_file()
    assert (runs["MCF7"] / "summary.json").read_text() == before  # evaluated, not rerun


def test_a_failed_evaluation_leaves_the_finished_run_completed(synthetic_root, two_per_line, tmp_path, monkeypatch):
    """`sweep --evaluate-on`: the run is stored before its evaluation starts, so an evaluation that fails is
    reported beside a completed run, not as a failed run."""
    from benchmark.commands import evaluate as evaluate_command
    from benchmark.config import resolve
    from benchmark.executors import execute_in_worker

    def diverges(*args, **kwargs):
        raise FloatingPointError("adaptation diverged")

    monkeypatch.setattr(evaluate_command, "evaluate_run", diverges)
    config = resolve("smoke", algo="reptile", holdout="MCF7", k=1, data_root=str(synthetic_root))
    summary = execute_in_worker(config, tmp_path, False, (str(two_per_line),))
    assert summary["status"] == "completed" and summary["evaluation_error"] == "FloatingPointError: adaptation diverged"
    assert json.loads((tmp_path / "runs" / config.run_id / "summary.json").read_text())["status"] == "completed"
