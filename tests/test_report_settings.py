"""Another setting of the same grid in a folder inside the results (``results/long``): compared run for run,
paired per test image and seed, with the algorithms' order here and there, in the report and its findings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report import write_results
from test_report_references import add_references

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


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = grid(tmp_path_factory.mktemp("results"), "default", 100)
    long = grid(root / "long", "long", 1000)
    boost(long, "finetune", 0.3)
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
        mine = table[table.protocol == protocol].set_index("algo")
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
    assert table.set_index(["protocol", "algo"]).loc[("tuned", "finetune"), "verdict"] == "higher"
    assert set(table.best_reference) == {"otsu-texture (reference)"}  # MCF7's best in the fabricated references


def test_the_orders_and_the_finding_say_whether_the_ranking_held(compared):
    root, _, out = compared
    text = (out / "tables" / "settings.md").read_text()
    assert "meta_steps 100 → 1000; preset default → long" in text
    assert "MCF7, k = 3, tuned protocol: maml > reptile > finetune (default), finetune > maml > reptile (long)" in text
    findings = (out / "tables" / "findings.md").read_text()
    said = next(line for line in findings.splitlines() if "`long`" in line)
    assert "held on 0 of 2 (held-out line, k, protocol) cells" in said and "[settings.md](settings.md)" in said
    assert "finetune" in said and "higher" in said
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
