"""Another setting of the same grid in a folder inside the results (``results/long``): compared run for run,
paired per test image and seed, with the algorithms' order here and there, in the report and its findings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report import write_results
from test_report_references import _write_evaluation, add_references

from benchmark.report import build_report
from benchmark.stats import holm, mean_ci, verdict

ALGOS = ("maml", "reptile", "finetune")  # fabricated gains: maml > reptile > finetune


def set_config(root: Path, **settings) -> None:
    for path in root.glob("runs/*/summary.json"):
        summary = json.loads(path.read_text())
        summary["config"].update(settings)
        path.write_text(json.dumps(summary))


def boost(root: Path, algo: str, gain: float) -> None:
    """Raise one algorithm's own rows (not the references its runs hold) by ``gain``: it meta-trained better there."""
    for path in root.glob(f"runs/{algo}-*/*.csv"):
        frame = pd.read_csv(path)
        own = frame["method"] == frame["algo"]
        frame.loc[own, "iou"] = np.clip(frame.loc[own, "iou"] + gain * (frame.loc[own, "step"] > 0), 0, 1)
        frame.to_csv(path, index=False)


def grid(root: Path, preset: str, meta_steps: int, **options) -> Path:
    write_results(root, algos=ALGOS, holdouts=("MCF7",), ks=(3,), seeds=(0, 1), examples=False, preset=preset, **options)
    add_references(root, tuned_gain=0.05)
    set_config(root, meta_steps=meta_steps)
    return root


def evaluate_all(root: Path, gain: dict[str, float] | None = None) -> None:
    """`evaluate`'s records on a small real-like set for every run, an algorithm's own rows raised by ``gain``."""
    for folder in sorted(root.glob("runs/*")):
        _write_evaluation(folder, "livecell-sample")
        algo = folder.name.split("-")[0]
        for name in ("images.csv.gz", "episodes.csv.gz"):
            path = folder / "evaluations" / "livecell-sample" / name
            frame = pd.read_csv(path)
            own = (frame["method"] == frame["algo"]) & (frame["step"] > 0)
            frame.loc[own, "iou"] = np.clip(frame.loc[own, "iou"] + (gain or {}).get(algo, 0.0), 0, 1)
            frame.to_csv(path, index=False)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = grid(tmp_path_factory.mktemp("results"), "default", 100)
    long = grid(root / "long", "long", 1000)
    boost(long, "finetune", 0.3)
    evaluate_all(root)
    evaluate_all(long, {"reptile": 0.1})
    out = root / "report"
    build_report(root, out)
    return root, long, out


def final_held_out(root: Path, protocol: str) -> pd.DataFrame:
    frame = pd.concat([pd.read_csv(p) for p in sorted(root.glob("runs/*/images.csv"))], ignore_index=True)
    last = frame["step"] == frame.groupby(["run_id", "method"])["step"].transform("max")
    return frame[last & (frame["role"] == "held-out") & (frame["protocol"] == protocol) & (frame["method"] == frame["algo"])]


def test_there_minus_here_is_paired_per_image_and_seed(compared):
    root, long, out = compared
    table = pd.read_csv(out / "tables" / "settings.csv")
    assert set(table.protocol) == {"seed", "tuned"} and set(table.setting) == {"long"}
    for protocol in ("seed", "tuned"):
        keys = ["algo", "seed", "image_id"]
        pairs = final_held_out(long, protocol).merge(final_held_out(root, protocol), on=keys, suffixes=("", "_here"))
        mine = table[(table.protocol == protocol) & (table.evaluated_on == "synthetic-v6")].set_index("algo")
        p = {}
        for algo, group in pairs.groupby("algo"):
            ci = mean_ci((group.iou - group.iou_here).to_numpy(), group.seed.to_numpy(), group.image_id.to_numpy(), group.crops.to_numpy())
            row = mine.loc[algo]
            assert (row["mean"], row["low"], row["high"], row["seeds"]) == pytest.approx((ci.mean, ci.low, ci.high, 2), abs=1e-6)
            here = np.average(group.iou_here, weights=group.crops)
            assert (row["here"], row["there"]) == pytest.approx((here, here + ci.mean), abs=1e-6)
            p[algo] = ci.p
        for algo in ALGOS:  # Holm across the held-out lines of each algorithm: one line here, so p itself
            assert mine.loc[algo, "p_holm"] == pytest.approx(holm(np.array([p[algo]]))[0], rel=1e-5)
            assert mine.loc[algo, "verdict"] == verdict(mine.loc[algo, "mean"], mine.loc[algo, "p_holm"])
    assert table.set_index(["evaluated_on", "protocol", "algo"]).loc[("synthetic-v6", "tuned", "finetune"), "verdict"] == "higher"
    assert set(table.best_reference) == {"otsu-texture (reference)"}  # MCF7's best in the fabricated references


def test_evaluations_on_other_data_are_paired_the_same_way(compared):
    root, long, out = compared
    table = pd.read_csv(out / "tables" / "settings.csv")
    assert set(table.evaluated_on) == {"synthetic-v6", "livecell-sample"}  # the runs' own data, and the evaluation's tag
    elsewhere = table[table.evaluated_on == "livecell-sample"].set_index(["protocol", "algo"])
    assert set(elsewhere.index.get_level_values("protocol")) == {"seed"} and set(elsewhere.seeds) == {2}

    def final(folder: Path) -> pd.DataFrame:
        frame = pd.concat([pd.read_csv(p) for p in sorted(folder.glob("runs/*/evaluations/livecell-sample/images.csv.gz"))])
        frame = frame[(frame.method == frame.algo) & (frame.role == "held-out")]
        return frame[frame.step == frame.step.max()]

    pairs = final(long).merge(final(root), on=["algo", "seed", "image_id"], suffixes=("", "_here"))
    for algo, group in pairs.groupby("algo"):
        ci = mean_ci((group.iou - group.iou_here).to_numpy(), group.seed.to_numpy(), group.image_id.to_numpy(), group.crops.to_numpy())
        row = elsewhere.loc[("seed", algo)]
        assert (row["mean"], row["low"], row["high"]) == pytest.approx((ci.mean, ci.low, ci.high), abs=1e-6)
    assert elsewhere.loc[("seed", "reptile"), "mean"] > 0.05 and elsewhere.loc[("seed", "maml"), "mean"] == pytest.approx(0, abs=1e-9)
    findings = (out / "tables" / "findings.md").read_text()
    assert "reptile on MCF7, k = 3 (on `livecell-sample`)" not in findings  # the finding speaks of the tuned protocol


def test_the_orders_and_the_finding_say_whether_the_ranking_held(compared):
    root, _, out = compared
    text = (out / "tables" / "settings.md").read_text()
    assert "meta_steps 100 → 1000; preset default → long" in text
    assert "MCF7, k = 3, tuned protocol: maml > reptile > finetune (default), finetune > maml > reptile (long)" in text
    findings = (out / "tables" / "findings.md").read_text()
    said = next(line for line in findings.splitlines() if "`long`" in line)
    assert ("tuned protocol: the algorithms' order by mean held-out IoU is MCF7, k = 3: maml > reptile > finetune (default), "
            "finetune > maml > reptile (long)") in said and "[settings.md](settings.md)" in said
    assert re.search(r"finetune on MCF7, k = 3: 0\.\d{3} → 0\.\d{3} \(\+0\.\d{3} \[.*\], higher\)", said)
    assert re.search(r"maml on MCF7, k = 3: (0\.\d{3}) → \1 \(\+0\.000 \[\+0\.000, \+0\.000\], no difference\)", said)
    index = (out / "report.md").read_text()
    assert "## Other settings of the same grid" in index and "[CSV](tables/settings.csv)" in index


def test_a_setting_whose_episodes_differ_is_named_not_compared(tmp_path):
    root = grid(tmp_path, "default", 100)
    grid(root / "bigger", "default", 100)
    set_config(root / "bigger", crop=128)
    build_report(root, root / "report")
    text = (root / "report" / "tables" / "settings.md").read_text()
    assert "Not compared: its episodes differ (crop)" in text and "crop None → 128" in text
    assert "`bigger`" not in (root / "report" / "tables" / "findings.md").read_text()


def test_no_other_setting_no_section(tmp_path):
    root = grid(tmp_path, "default", 100)
    build_report(root, root / "report")
    assert not (root / "report" / "tables" / "settings.md").exists()
    assert "Other settings" not in (root / "report" / "report.md").read_text()


def test_both_means_and_the_order_come_from_the_pairs_alone(tmp_path):
    """A run of one side without tuned records leaves its images out of both means, not just the difference."""
    root = grid(tmp_path, "default", 100)
    long = grid(root / "long", "long", 1000)
    boost(long, "maml", 0.1)
    for name in ("images.csv", "episodes.csv"):
        path = long / "runs" / "maml-MCF7-k3-s1" / name
        frame = pd.read_csv(path)
        frame[frame.protocol == "seed"].to_csv(path, index=False)
    build_report(root, root / "report")
    row = pd.read_csv(root / "report" / "tables" / "settings.csv").set_index(["protocol", "algo"]).loc[("tuned", "maml")]
    here = final_held_out(root, "tuned")
    here = here[(here.algo == "maml") & (here.seed == 0)]
    assert row["seeds"] == 1 and row["here"] == pytest.approx(np.average(here.iou, weights=here.crops), abs=1e-6)
    assert row["there"] - row["here"] == pytest.approx(row["mean"], abs=2e-6)  # the CSV holds 6 digits


def test_an_unusable_inner_folder_is_named_and_the_report_stands(tmp_path):
    root = grid(tmp_path, "default", 100)
    grid(root / "mixed", "long", 1000)
    summary = root / "mixed" / "runs" / "maml-MCF7-k3-s0" / "summary.json"
    summary.write_text(summary.read_text().replace('"meta_steps": 1000', '"meta_steps": 500'))
    write_results(root / "old", algos=("maml",), holdouts=("MCF7",), ks=(3,), seeds=(0,), examples=False)
    for path in (root / "old").glob("runs/*/summary.json"):
        path.write_text(path.read_text().replace('"numerics_version": ', '"numerics_version": -1, "was": '))
    grid(root / "steps", "default", 100)
    set_config(root / "steps", inner_steps=5)  # adaptation differs, episodes do not: compared
    build_report(root, root / "report")
    text = (root / "report" / "tables" / "settings.md").read_text()
    assert "### `mixed`" in text and "Not compared:" in text and "completed runs with different settings" in text
    assert "### `old`\n\nIts settings against this folder's: none differ.\n\nNot compared: no completed run of today's code (1 stale)" in text
    assert "inner_steps 3 → 5" in text and "| tuned | MCF7 | 3 | maml |" in text
