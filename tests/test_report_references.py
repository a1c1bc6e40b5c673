"""The references in ``report``: grey lines in the adaptation curves, each algorithm against the best reference,
and the table of evaluations on other data (``evaluate``) with the references beside the algorithms."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib.colors
import numpy as np
import pandas as pd
import pytest
from test_report import write_results

from benchmark.cli import main as cli_main
from benchmark.observations import compact, per_episode, per_image
from benchmark.report import build_report, plots
from benchmark.report.records import completed_runs, load_evaluation_units
from benchmark.stats import holm, mean_ci, verdict
from tasks.errors import DataError

STEPS = 3
CLASSICAL = ("all-foreground", "otsu", "otsu-texture")
REFERENCES = (*CLASSICAL, "scratch")
# mean IoU of each reference by held-out line: a different one is best on each line, and scratch adapts
LEVEL = {"MCF7": {"all-foreground": 0.35, "otsu": 0.3, "otsu-texture": 0.5, "scratch": 0.4},  # otsu-texture best
         "A172": {"all-foreground": 0.42, "otsu": 0.3, "otsu-texture": 0.4, "scratch": 0.45}}  # scratch: 0.51 at the end


def _reference_iou(name: str, line: str, seed: int, image: int, step: int) -> float:
    """A reference's IoU on one image: a function of what it scores, never of the algorithm whose run holds it."""
    noise = np.random.default_rng([REFERENCES.index(name), seed, image]).normal(0, 0.03)
    return LEVEL.get(line, LEVEL["MCF7"])[name] + noise + (0.02 * step if name == "scratch" else 0.0)


def add_references(root: Path, tuned_gain: float | None = None) -> Path:
    """Give every fabricated run the references' per-image rows beside its own (``method`` and ``reference``
    columns, as the store writes), each on the same images and crops; ``tuned_gain`` adds tuned-protocol rows (the
    algorithm's shifted by it, the references unchanged and, as the store wrote before its records were compact,
    repeated)."""
    for folder in sorted(root.glob("runs/*")):
        for name in ("images.csv", "episodes.csv"):
            own = pd.read_csv(folder / name).assign(method=lambda f: f["algo"])
            position = "image_id" if name == "images.csv" else "episode"
            rows = []
            for name_ in REFERENCES:
                steps = range(STEPS + 1) if name_ == "scratch" else [0]
                at = own[own["step"] == 0]
                for step in steps:
                    ious = [_reference_iou(name_, r.line, r.seed, r[position] if position == "image_id" else 0, step)
                            for _, r in at.iterrows()]
                    rows.append(at.assign(method=name_, step=step, iou=np.clip(ious, 0, 1)))
            frame = pd.concat([own, *rows], ignore_index=True)
            frame["reference"] = frame["method"] != frame["algo"]
            frame["protocol"] = "seed"
            if tuned_gain is not None:
                tuned = frame.assign(protocol="tuned")
                mine = tuned["method"] == tuned["algo"]
                tuned.loc[mine, "iou"] = np.clip(tuned.loc[mine, "iou"] + tuned_gain, 0, 1)
                frame = pd.concat([frame, tuned], ignore_index=True)
            frame.to_csv(folder / name, index=False)
    return root


@pytest.fixture(scope="module")
def referenced(tmp_path_factory):
    root = write_results(tmp_path_factory.mktemp("results"), algos=("maml", "reptile", "finetune"), holdouts=("MCF7", "A172"),
                         ks=(1, 3), seeds=(0, 1), steps=STEPS, examples=False)
    add_references(root, tuned_gain=0.05)
    out = root / "report"
    build_report(root, out)
    return root, out


def final_images(root: Path) -> pd.DataFrame:
    """Every per-image record at its method's last step, read back independently of the report code."""
    raw = pd.concat([pd.read_csv(p) for p in sorted(root.glob("runs/*/images.csv"))], ignore_index=True)
    last = raw.groupby(["algo", "method"])["step"].transform("max")
    return raw[raw["step"] == last]


def test_the_best_reference_is_the_highest_mean_of_the_four(referenced):
    root, out = referenced
    final = final_images(root)
    held = final[(final.role == "held-out") & (final.method != final.algo)].drop_duplicates(["method", "holdout", "k", "seed", "image_id", "protocol"])
    means = held.groupby(["protocol", "k", "line", "method"]).apply(lambda g: np.average(g.iou, weights=g.crops), include_groups=False)
    table = pd.read_csv(out / "tables" / "best_reference.csv")
    assert set(table.protocol) == {"seed", "tuned"} and set(table.algo) == {"maml", "reptile", "finetune"}
    for row in table.itertuples():
        cell = means.loc[(row.protocol, row.k, row.line)]
        assert row.reference == f"{cell.idxmax()} (reference)" and row.reference_mean == pytest.approx(cell.max(), abs=1e-6)
    assert dict(zip(table.line, table.reference)) == {"MCF7": "otsu-texture (reference)", "A172": "scratch (reference)"}


def test_the_difference_is_the_mean_of_paired_image_differences(referenced):
    root, out = referenced
    final = final_images(root)
    table = pd.read_csv(out / "tables" / "best_reference.csv")
    for protocol in ("seed", "tuned"):
        mine = table[table.protocol == protocol]
        for (algo, k), rows in mine.groupby(["algo", "k"]):
            expected_p = []
            for row in rows.itertuples():
                held = final[(final.protocol == protocol) & (final.k == k) & (final.holdout == row.line) & (final.line == row.line)]
                ours = held[(held.algo == algo) & (held.method == algo)]
                reference = held[held.method == row.reference.removesuffix(" (reference)")].drop_duplicates(["seed", "image_id"])
                pairs = ours.merge(reference, on=["seed", "image_id"], suffixes=("", "_ref"))
                assert (pairs.crops == pairs.crops_ref).all() and len(pairs) == row.pairs
                diff = pairs.iou - pairs.iou_ref
                assert row.mean == pytest.approx(np.average(diff, weights=pairs.crops), abs=1e-6)
                assert row.mean == pytest.approx(row.algo_mean - row.reference_mean, abs=1e-6)  # same crops behind both
                ci = mean_ci(diff, pairs.seed, pairs.image_id, pairs.crops)
                assert (row.low, row.high, row.p) == pytest.approx((ci.low, ci.high, ci.p), rel=1e-4)
                assert row.seeds == 2 and row.images == pairs.image_id.nunique()
                expected_p.append(ci.p)
            assert rows.p_holm.to_numpy() == pytest.approx(holm(expected_p), rel=1e-4)
            assert list(rows.verdict) == [verdict(m, p) for m, p in zip(rows["mean"], rows.p_holm)]
    seed, tuned = (table[table.protocol == p].set_index(["algo", "k", "line"]) for p in ("seed", "tuned"))
    assert (tuned.reference == seed.reference).all()  # the references do not depend on the adaptation rate
    assert (tuned["mean"] - seed["mean"]).to_numpy() == pytest.approx(0.05, abs=1e-6)


def test_the_best_reference_section_says_it_is_chosen_on_the_test_episodes(referenced):
    _, out = referenced
    index = (out / "report.md").read_text()
    section = index[index.index("## Against the best reference"):]
    assert "chosen on the test episodes" in section and "a floor" in section and "tables/best_reference.md" in section
    md = (out / "tables" / "best_reference.md").read_text()
    assert "### Seed protocol" in md and "### Tuned protocol" in md and "| maml | 1 | MCF7 | otsu-texture |" in md


def _copy_runs(root: Path, to: Path) -> Path:
    shutil.copytree(root / "runs", to / "runs")
    return to


def test_references_recorded_once_stand_under_every_protocol(referenced, tmp_path):
    """Today's records hold the references' rows once, under the seed protocol; the report takes them for the
    tuned protocol too, so every table is that of records repeating them under each (as written before), bit for bit."""
    root, out = referenced
    once = _copy_runs(root, tmp_path)
    for path in once.glob("runs/*/*.csv"):
        frame = pd.read_csv(path)
        kept = compact(frame)
        assert set(kept[kept.reference].protocol) == {"seed"} and len(kept) < len(frame)
        assert kept.equals(frame[~(frame.reference & (frame.protocol == "tuned"))])  # only the repeated rows go
        kept.to_csv(path, index=False)
    build_report(once, once / "report")
    for table in sorted((out / "tables").glob("*")):
        assert (once / "report" / "tables" / table.name).read_bytes() == table.read_bytes(), table.name


def test_compact_rewrites_finished_records_in_todays_form_and_moves_no_number(referenced, tmp_path, capsys):
    root, out = referenced
    results = _copy_runs(root, tmp_path)
    inner = _copy_runs(root, results / "long")  # another setting's folder inside the results
    unfinished = results / "runs" / "maml-MCF7-k1-s0"
    summary = json.loads((unfinished / "summary.json").read_text())
    (unfinished / "summary.json").write_text(json.dumps(summary | {"status": "failed"}))
    images = results / "runs" / "reptile-A172-k3-s1" / "images.csv"
    pd.read_csv(images).assign(predicted_foreground=0.25).to_csv(images, index=False)  # as images were written before
    before = {path: pd.read_csv(path) for path in results.glob("runs/*/*.csv")}
    assert cli_main(["compact", str(results)]) == 0
    printed = capsys.readouterr().err
    assert f"{results}: 46 record files rewritten" in printed  # 24 runs x 2 files, less the failed run's
    assert f"{inner}: 48 record files rewritten" in printed
    for path, old in before.items():
        new = pd.read_csv(path)
        if path.parent == unfinished:
            assert new.equals(old)
            continue
        assert "predicted_foreground" not in new and new.reference.sum() < old.reference.sum()
        kept = compact(old).drop(columns="predicted_foreground", errors="ignore").reset_index(drop=True)
        assert new.drop(columns="iou").equals(kept.drop(columns="iou"))
        assert np.allclose(new.iou, kept.iou, rtol=1e-8, atol=0)
        assert new.iou.map(lambda v: float(f"{v:.9g}")).eq(new.iou).all()  # 9 significant digits
    again = {path: path.read_bytes() for path in results.glob("**/runs/*/*.csv")}
    assert cli_main(["compact", str(results)]) == 0 and again == {path: path.read_bytes() for path in again}
    assert "0 record files rewritten" in capsys.readouterr().err
    original = (root / "runs" / "maml-MCF7-k1-s0" / "images.csv").read_bytes()
    assert (unfinished / "images.csv").read_bytes() == original != (inner / "runs" / "maml-MCF7-k1-s0" / "images.csv").read_bytes()
    shutil.rmtree(inner)  # the report would compare it as another setting
    (unfinished / "summary.json").write_text(json.dumps(summary))
    build_report(results, results / "report")
    for table in sorted((out / "tables").glob("*")):
        ours = results / "report" / "tables" / table.name
        if table.suffix == ".md":
            assert ours.read_text() == table.read_text(), table.name
            continue
        ours, theirs = pd.read_csv(ours), pd.read_csv(table)
        numbers = theirs.select_dtypes("number").columns
        assert ours.drop(columns=numbers).equals(theirs.drop(columns=numbers)), table.name
        assert np.allclose(ours[numbers], theirs[numbers], rtol=0, atol=1e-7, equal_nan=True), table.name


@pytest.mark.parametrize(
    "where, text, says",
    [("summary.json", "{not json", "not valid JSON"), ("summary.json", "[1, 2]", "not a run summary"),
     ("images.csv", "", "not a readable record table"), ("images.csv", "a,b\n1,2\n", "no line, step, iou column"),
     ("images.csv", None, "column 'reference' must be True or False")],
)
def test_compact_refuses_broken_records_in_one_line_naming_the_file(referenced, tmp_path, capsys, where, text, says):
    results = _copy_runs(referenced[0], tmp_path)
    path = results / "runs" / "finetune-A172-k1-s0" / where
    if text is None:  # one blank cell in the reference column
        frame = pd.read_csv(path).astype({"reference": object})
        frame.loc[3, "reference"] = None
        frame.to_csv(path, index=False)
    else:
        path.write_text(text)
    assert cli_main(["compact", str(results)]) == 2
    err = capsys.readouterr().err
    assert says in err and str(path) in err.replace("\n", "") and "Traceback" not in err


def test_the_report_refuses_a_reference_column_that_is_not_true_or_false(tmp_path):
    root = add_references(write_results(tmp_path, algos=("maml",), holdouts=("MCF7",), ks=(1,), steps=STEPS, examples=False))
    path = root / "runs" / "maml-MCF7-k1-s0" / "episodes.csv"
    frame = pd.read_csv(path).astype({"reference": object})
    frame.loc[0, "reference"] = "maybe"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="episodes.csv: column 'reference' must be True or False"):
        build_report(root, root / "report")


def test_no_references_say_so(tmp_path):
    root = write_results(tmp_path, algos=("maml",), holdouts=("MCF7",), ks=(1,), examples=False)
    build_report(root, root)
    assert (root / "tables" / "best_reference.md").read_text().endswith("No references in these records (runs recorded before references were).\n")


def test_references_are_grey_lines_in_the_adaptation_curves(referenced, tmp_path, monkeypatch):
    root, _ = referenced
    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (figures.append(fig), save(fig, path))[1])
    build_report(root, tmp_path)
    fig = next(f for f in figures if f.get_suptitle().startswith("Adaptation curves"))
    panel = next(ax for ax in fig.axes if ax.get_title() == "MCF7 held out, k=1")
    curves = pd.read_csv(tmp_path / "tables" / "adaptation_curves.csv").query("holdout == 'MCF7' and k == 1")
    grey = [line for line in panel.get_lines() if matplotlib.colors.to_hex(line.get_color()) == matplotlib.colors.to_hex(plots.REFERENCE_GREY)]
    assert len(grey) == len(REFERENCES)
    for name in CLASSICAL:  # horizontal across every step, at the reference's mean
        mean = curves[curves.algo == f"{name} (reference)"]["mean"].item()
        assert any(np.allclose(line.get_ydata(), mean) and list(line.get_xdata()) == [0, STEPS] for line in grey), name
    scratch = curves[curves.algo == "scratch (reference)"].sort_values("step")
    dashed = [line for line in grey if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and np.allclose(dashed[0].get_ydata(), scratch["mean"]) and len(scratch) == STEPS + 1
    assert {text.get_text() for text in panel.texts} == set(REFERENCES)  # each labelled on the panel
    coloured = [line for line in panel.get_lines() if line not in grey]
    assert len(coloured) == 3  # the algorithms keep their colours


def _write_evaluation(folder: Path, tag: str, line: str = "MCF7", images=(11, 12), episodes: int = 4, queries: int = 2) -> None:
    """``evaluate``'s records for one run: per-crop rows of the algorithm and the references on a small set,
    each episode's queries from one of ``images`` in turn (the small-set rule with k = 1 and two images)."""
    run = json.loads((folder / "summary.json").read_text())["config"]
    rows = []
    for method in (run["algo"], *REFERENCES):
        steps = [0] if method in CLASSICAL else range(STEPS + 1)
        for episode in range(episodes):
            image = images[episode % len(images)]
            for query in range(queries):
                for step in steps:
                    noise = np.random.default_rng([len(method), run["seed"], episode, query, step]).normal(0, 0.05)
                    if method == run["algo"]:
                        iou = 0.3 + (0.05 if method == "reptile" else 0.0) + 0.03 * run["seed"] + 0.05 * step + noise
                    else:  # the same for every run of this seed
                        iou = _reference_iou(method, line, run["seed"], image, step) + noise
                    rows.append({"run_id": "other-id", "algo": run["algo"], "holdout": run["holdout"], "k": run["k"], "seed": run["seed"],
                                 "protocol": "seed", "method": method, "reference": method != run["algo"], "line": line,
                                 "role": "held-out" if line == run["holdout"] else "seen", "episode": episode, "query": query,
                                 "image_id": image, "step": step, "iou": float(np.clip(iou, 0, 1)), "predicted_foreground": 0.5,
                                 "evaluated_on": tag, "split": "val"})
    out = folder / "evaluations" / tag
    out.mkdir(parents=True, exist_ok=True)
    observations = pd.DataFrame(rows)  # per crop, and the compact records the report reads, as `evaluate` writes them
    observations.to_csv(out / "observations.csv.gz", index=False)
    per_image(observations).to_csv(out / "images.csv.gz", index=False)
    per_episode(observations).to_csv(out / "episodes.csv.gz", index=False)
    summary_line = {"line": line, "protocol": "seed", "role": "held-out", "split": "val", "images": len(images), "episodes": episodes,
                    "iou": 0.5, "iou_ci": [0.4, 0.6], "iou_step0": 0.4}
    (out / "summary.json").write_text(json.dumps({"run_id": folder.name, "algo": run["algo"], "holdout": run["holdout"], "run_k": run["k"],
                                                  "evaluated_on": tag, "k": run["k"], "crop": 32, "lines": [summary_line]}))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = write_results(tmp_path_factory.mktemp("evaluated"), algos=("reptile", "finetune"), holdouts=("MCF7",), ks=(1,),
                         seeds=(0, 1, 2), steps=STEPS, examples=False)
    add_references(root)
    for folder in sorted(root.glob("runs/*")):
        _write_evaluation(folder, "livecell-sample")
    build_report(root, root / "report")
    return root, root / "report"


def crops_of(root: Path) -> pd.DataFrame:
    """Every fabricated evaluation crop at its method's last step, read back independently of the report code."""
    raw = pd.concat([pd.read_csv(p) for p in sorted(root.glob("runs/*/evaluations/*/observations.csv.gz"))], ignore_index=True)
    return raw[raw.step == raw.groupby("method").step.transform("max")]


def test_the_real_table_has_every_algorithm_over_its_seeds_and_the_references(evaluated):
    root, out = evaluated
    crops = crops_of(root)
    table = pd.read_csv(out / "tables" / "evaluated_elsewhere.csv")
    assert list(table.algo) == ["reptile", "finetune", *(f"{name} (reference)" for name in REFERENCES)]
    assert set(table.evaluated_on) == {"livecell-sample"} and set(table.k) == {1} and set(table.role) == {"held-out"}
    assert (table.seeds == 3).all() and (table.images == 2).all() and (table.episodes == 12).all()
    for row in table.itertuples():
        method = row.algo.removesuffix(" (reference)")
        mine = crops[crops.method == method]
        if method in REFERENCES:
            mine = mine.drop_duplicates(["seed", "episode", "query"])  # one copy of each reference crop per seed
        assert row.mean == pytest.approx(mine.iou.mean(), abs=1e-6)  # the mean over all seeds' crops (equal counts)
        per_image = mine.groupby(["seed", "image_id"]).iou.agg(["mean", "size"]).reset_index()
        ci = mean_ci(per_image["mean"], per_image.seed, per_image.image_id, per_image["size"])
        bounded = (max(ci.low, 0.0), min(ci.high, 1.0))  # images and seeds are the units; an IoU lies in [0, 1]
        assert (row.low, row.high) == pytest.approx(bounded, rel=1e-4, abs=1e-9)


def test_the_real_table_states_each_algorithm_against_the_best_reference(evaluated):
    root, out = evaluated
    crops = crops_of(root)
    table = pd.read_csv(out / "tables" / "evaluated_elsewhere.csv").set_index("algo")
    references = table.loc[[f"{name} (reference)" for name in REFERENCES], "mean"]
    assert references.idxmax() == "otsu-texture (reference)" and (table.best_reference == references.idxmax()).all()
    best = references.idxmax().removesuffix(" (reference)")
    for algo in ("reptile", "finetune"):
        pairs = crops[crops.method == algo].merge(crops[(crops.method == best) & (crops.algo == algo)], on=["seed", "episode", "query"],
                                                  suffixes=("", "_ref"))
        per_image = pairs.assign(diff=pairs.iou - pairs.iou_ref).groupby(["seed", "image_id"])["diff"].agg(["mean", "size"]).reset_index()
        ci = mean_ci(per_image["mean"], per_image.seed, per_image.image_id, per_image["size"])
        row = table.loc[algo]
        assert row["diff"] == pytest.approx(np.average(per_image["mean"], weights=per_image["size"]), abs=1e-6)
        assert row["diff"] == pytest.approx(row["mean"] - references.max(), abs=1e-6)
        assert (row.diff_low, row.diff_high, row.p) == pytest.approx((ci.low, ci.high, ci.p), rel=1e-4)
    assert table.loc[[f"{name} (reference)" for name in REFERENCES], "diff"].isna().all()


def test_the_real_section_says_what_its_intervals_are(evaluated):
    _, out = evaluated
    index = (out / "report.md").read_text()
    section = index[index.index("## Evaluations on other datasets"):]
    assert "2 images" in section and "not images" in section and "mean over its seeds" in section
    assert "tables/evaluated_elsewhere.md" in section and "### Per run" in section
    assert "| MCF7 (held-out) | MCF7 | 1 | seed | otsu-texture (reference) | 3 | 2 | 12 |" in section
    assert "(best reference)" in section and "2 annotated image(s) in its val split" in section


def test_evaluations_whose_references_scored_other_crops_are_refused(tmp_path):
    root = write_results(tmp_path, algos=("reptile", "finetune"), holdouts=("MCF7",), ks=(1,), steps=STEPS, examples=False)
    folders = sorted(root.glob("runs/*"))
    _write_evaluation(folders[0], "sample")
    _write_evaluation(folders[1], "sample", episodes=3)
    with pytest.raises(DataError, match="scored different crops of MCF7.*give each its own --tag"):
        load_evaluation_units(completed_runs(root))


def test_the_real_table_from_evaluate_itself(tmp_path, synthetic_root, sample_root):
    """A smoke-preset run evaluated on the real sample: the table's algorithm row is the algorithm's records
    alone, and the references stand beside it."""
    from benchmark.cli import main
    from benchmark.config import resolve
    from benchmark.execute import execute
    from benchmark.store import Store

    config = resolve("smoke", algo="reptile", holdout="MCF7", data_root=str(synthetic_root))
    execute(config, Store(tmp_path))
    assert main(["evaluate", config.run_id, "--results", str(tmp_path), "--data-root", str(sample_root), "--holdout", "MCF7"]) == 0
    build_report(tmp_path, tmp_path / "report")
    observations = pd.read_csv(next(tmp_path.glob("runs/*/evaluations/*/observations.csv.gz")))
    table = pd.read_csv(tmp_path / "report" / "tables" / "evaluated_elsewhere.csv")
    for protocol, mine in table.groupby("protocol"):
        records = observations[observations.protocol == protocol]
        own = records[(records.method == "reptile") & (records.step == records.step.max())]
        assert mine.set_index("algo").loc["reptile", "mean"] == pytest.approx(own.iou.mean(), abs=1e-6)
        assert set(mine.algo) == {"reptile", *(f"{name} (reference)" for name in REFERENCES)}
        assert (mine.images == 2).all()


def test_an_evaluation_from_before_per_image_records_is_read_from_its_crops(tmp_path):
    root = write_results(tmp_path, algos=("reptile",), holdouts=("MCF7",), ks=(1,), seeds=(0,), steps=STEPS, examples=False)
    add_references(root)
    folder = next(root.glob("runs/*"))
    _write_evaluation(folder, "livecell-sample")
    runs = completed_runs(root)
    current = load_evaluation_units(runs)
    (folder / "evaluations" / "livecell-sample" / "images.csv.gz").unlink()
    pd.testing.assert_frame_equal(load_evaluation_units(runs), current)
    (folder / "evaluations" / "livecell-sample" / "observations.csv.gz").unlink()
    with pytest.raises(DataError, match=r"livecell-sample: evaluation without images\.csv\.gz or observations\.csv\.gz; run `python"):
        load_evaluation_units(runs)
