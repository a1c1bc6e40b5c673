"""The README's headline table and the report's findings: the best-entry mark needs a paired difference beyond the
practical threshold, seeds are counted, missing cells are dashes, references are in italics; the findings are
generated from the tables they name; and the README's table is the committed ``results/tables/headline.md``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report import write_results
from test_report_references import add_references

from benchmark.report import build_report, headline
from benchmark.report.records import COLLAPSE_COLUMNS
from benchmark.report.summaries import cell_summary
from benchmark.stats import mean_ci

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- headline:start -->\n", "<!-- headline:end -->"


def test_the_readme_results_are_the_committed_report_block():
    """The README's table and findings are what `python -m benchmark report` wrote from the committed records
    (results/readme.md): a README number that today's records do not produce fails here."""
    committed = ROOT / "results" / "readme.md"
    readme = (ROOT / "README.md").read_text()
    assert readme.count(START) == 1 and readme.count(END) == 1, "README.md needs one headline:start and one headline:end marker"
    if not committed.is_file():
        pytest.skip(f"{committed.relative_to(ROOT)} not committed yet: run `python -m benchmark report` and paste it into README.md")
    block = readme.split(START)[1].split(END)[0]
    assert block == committed.read_text(), "README.md's results block differs from results/readme.md (paste the file between the markers)"


def units_of(methods: dict[str, list[list[float]]], line: str = "MCF7", k: int = 3) -> pd.DataFrame:
    """Held-out per-image units: ``methods`` maps a method to one list of per-image IoUs per seed (image i the
    same test image under every seed and method), two crops each; step 0 one tenth lower."""
    rows = []
    for algo, seeds in methods.items():
        for seed, values in enumerate(seeds):
            for image, iou in enumerate(values):
                for step, final in ((0, False), (10, True)):
                    rows.append({"run_id": f"{algo}-{line}-{seed}", "algo": algo, "holdout": line, "k": k, "seed": seed, "line": line,
                                 "role": "held-out", "unit": f"image {image}", "step": step, "iou": iou - 0.1 * (step == 0),
                                 "weight": 2.0, "episodes": 4, "final": final})
    return pd.DataFrame(rows)


def table_of(units: pd.DataFrame, runs_algos=None) -> tuple[str, pd.DataFrame]:
    algos = runs_algos or [a for a in units["algo"].unique() if not a.endswith(" (reference)")]
    runs = pd.DataFrame([(a, line) for a in algos for line in units["holdout"].unique()], columns=["algo", "holdout"])
    return headline.headline(units, cell_summary(units), runs)


def row_of(markdown: str, name: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {name} |"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


_DRAWN = np.random.default_rng(5).normal(0, 0.05, 12)
NOISE = _DRAWN - _DRAWN.mean()  # image effects, shared by every method, centred so a method's mean is its level


def test_the_best_is_marked_when_the_paired_difference_clears_the_threshold():
    units = units_of({"reptile": [0.6 + NOISE + 0.03], "finetune": [0.6 + NOISE + np.linspace(-0.001, 0.001, 12)]})
    text, csv = table_of(units)
    assert row_of(text, "reptile")[0].startswith("**0.630 [") and "**" not in row_of(text, "finetune")[0]
    best = csv[csv.best].iloc[0]
    pairs = units[units.final]
    ci = mean_ci(pairs[pairs.algo == "reptile"].iou.to_numpy() - pairs[pairs.algo == "finetune"].iou.to_numpy(), units=np.arange(12))
    assert (best.algo, best.runner_up, best.marked) == ("reptile", "finetune", True)
    assert (best["diff"], best.diff_low, best.diff_high) == pytest.approx((ci.mean, ci.low, ci.high), abs=1e-6)


@pytest.mark.parametrize("second", [
    pytest.param(0.6 + NOISE + 0.025, id="below the threshold though its interval excludes 0"),
    pytest.param(0.6 + NOISE[::-1] + 0.015, id="beyond the threshold but its interval holds 0"),
    pytest.param(0.63 + NOISE, id="a tie"),
])
def test_no_mark_without_a_clear_paired_difference(second):
    units = units_of({"reptile": [0.63 + NOISE], "finetune": [second]})
    best = headline.leaders(units, cell_summary(units))
    text, csv = table_of(units)
    assert "**" not in text.split("\n\n")[0] and not csv.marked.any() and len(best) == 1 and not best.marked.iloc[0]
    if best["mean"].iloc[0] > 0.01:
        assert best["low"].iloc[0] <= 0
    else:
        assert best["mean"].iloc[0] <= 0.01


def test_a_reference_can_be_the_marked_best_and_references_are_in_italics_after_the_algorithms():
    units = units_of({"maml": [0.3 + NOISE], "otsu-texture (reference)": [0.6 + NOISE], "all-foreground (reference)": [0.3 + NOISE]})
    text, _ = table_of(units)
    names = [line.split("|")[1].strip() for line in text.splitlines()[2:] if line.startswith("|")]
    assert names == ["maml", "*all-foreground* (reference)", "*otsu-texture* (reference)"]
    assert row_of(text, "*otsu-texture* (reference)")[0].startswith("**0.600")


def test_seeds_are_counted_and_a_missing_cell_is_a_dash():
    three = units_of({"reptile": [0.6 + NOISE] * 3, "finetune": [0.5 + NOISE] * 2})
    other = units_of({"reptile": [0.6 + NOISE]}, line="A172")
    text, csv = table_of(pd.concat([three, other]), runs_algos=["reptile", "finetune"])
    assert text.splitlines()[0] == "| method | A172 | MCF7 |"  # the lines in catalogue order
    assert row_of(text, "reptile")[0].endswith("(1 seed)") and not row_of(text, "reptile")[1].endswith(")")
    assert row_of(text, "finetune") == ["—", row_of(text, "finetune")[1]] and row_of(text, "finetune")[1].endswith("(2 seeds)")
    assert set(csv.seeds) == {1, 2, 3} and "fewer than 3 seeds" in text


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    root = write_results(tmp_path_factory.mktemp("results"), algos=("maml", "reptile", "finetune"), holdouts=("MCF7", "A172"),
                         ks=(1, 3), seeds=(0, 1), examples=False, steps=3)
    add_references(root, tuned_gain=0.05)
    build_report(root, root / "report")
    return root / "report"


def test_the_report_writes_the_headline_from_the_tuned_table_and_findings_that_name_their_tables(reported):
    table = (reported / "tables" / "headline.md").read_text()
    tuned = pd.read_csv(reported / "tables" / "leave_one_line_out_tuned.csv")
    for cell in tuned[tuned.k == 3].itertuples():
        name = f"*{cell.algo.removesuffix(' (reference)')}* (reference)" if cell.algo.endswith("(reference)") else cell.algo
        column = {"A172": 0, "MCF7": 1}[cell.holdout]
        assert row_of(table, name)[column].strip("*").startswith(f"{cell.mean:.3f} [{cell.low:.3f}, {cell.high:.3f}]")
        assert row_of(table, name)[column].endswith("(2 seeds)")
    index = (reported / "report.md").read_text()
    assert table in index and "## Findings" in index
    findings = (reported / "tables" / "findings.md").read_text()
    assert "[k_effect.md](k_effect.md)" in findings and "[k_effect.md](tables/k_effect.md)" in index
    assert "leave_one_line_out_tuned.md" in findings and "collapse.md" not in findings  # no run recorded collapse counts


def test_no_headline_without_the_tuned_protocol(tmp_path):
    root = write_results(tmp_path, algos=("reptile",), holdouts=("MCF7",), ks=(3,), examples=False)
    build_report(root, root / "report")
    assert not (root / "report" / "tables" / "headline.md").exists()
    assert "no headline table" in (root / "report" / "report.md").read_text()


def test_the_rank_finding_counts_the_cells_whose_order_changes():
    def cells(means):
        return pd.DataFrame([(algo, 3, line, line, "held-out", mean) for (algo, line), mean in means.items()],
                            columns=["algo", "k", "holdout", "line", "role", "mean"])

    seed = cells({("reptile", "MCF7"): 0.7, ("finetune", "MCF7"): 0.6, ("reptile", "A172"): 0.7, ("finetune", "A172"): 0.6})
    tuned = cells({("reptile", "MCF7"): 0.7, ("finetune", "MCF7"): 0.8, ("reptile", "A172"): 0.7, ("finetune", "A172"): 0.65})
    said = headline.rank_finding(seed, tuned, "")
    assert "changes on 1 of 2 held-out cells" in said and "the best algorithm changes on 1 of them (MCF7, k = 3: reptile → finetune)" in said
    assert "is the same on all 2" in headline.rank_finding(seed, seed, "")
    three = cells({("reptile", "MCF7"): 0.7, ("finetune", "MCF7"): 0.6, ("anil", "MCF7"): 0.5})
    swapped = cells({("reptile", "MCF7"): 0.7, ("finetune", "MCF7"): 0.5, ("anil", "MCF7"): 0.6})
    assert "changes on 1 of 1 held-out cells (line, k) with two or more algorithms; the best algorithm stays the same on all of them" \
        in headline.rank_finding(three, swapped, "")
    assert headline.rank_finding(seed[seed.algo == "reptile"], tuned[tuned.algo == "reptile"], "") is None


def test_the_k_finding_counts_verdicts_per_algorithm():
    table = pd.DataFrame({"algo": ["reptile", "reptile", "otsu (reference)"], "k": 3, "k_low": 1, "line": ["MCF7", "A172", "MCF7"],
                          "mean": [0.066, 0.004, 0.02], "verdict": ["higher", "no difference", "higher"]})
    said = headline.k_finding(table, "")
    assert "From k = 1 to k = 3" in said and "reptile higher on 1, no difference on 1 of 2 held-out line(s) (+0.004 to +0.066)" in said
    assert "otsu" not in said and headline.k_finding(table.iloc[:0], "") is None


def test_the_collapse_finding_says_which_collapsed_where_and_which_never_did():
    counts = pd.DataFrame([
        ("a", "maml", "MCF7", 3, 0, 40, 40, 40, True), ("b", "maml", "A172", 3, 0, 40, 12, 40, False),
        ("c", "reptile", "MCF7", 3, 0, 0, 0, 40, False),
    ], columns=COLLAPSE_COLUMNS)
    said = headline.collapse_finding(counts, "tables/")
    assert "maml in 1 of 2 runs, on 1 of its 2 held-out line(s)" in said and "never: reptile (1 run)" in said
    assert "[collapse.md](tables/collapse.md)" in said
    assert headline.collapse_finding(counts.assign(collapsed=False), "").startswith("No algorithm collapsed")
    assert headline.collapse_finding(counts.iloc[:0], "") is None


def test_the_elsewhere_finding_names_the_best_reference_and_the_largest_difference():
    block = {"evaluated_on": "livecell-sample", "holdout": "MCF7", "line": "MCF7", "k": 3, "protocol": "tuned", "best_reference": "otsu-texture (reference)"}
    methods = pd.DataFrame([
        {**block, "algo": "reptile", "mean": 0.58, "diff": -0.04, "diff_low": -0.09, "diff_high": 0.01, "verdict": "unclear"},
        {**block, "algo": "maml", "mean": 0.40, "diff": -0.22, "diff_low": -0.3, "diff_high": -0.1, "verdict": "lower"},
        {**block, "algo": "otsu-texture (reference)", "mean": 0.62, "diff": np.nan, "diff_low": np.nan, "diff_high": np.nan, "verdict": np.nan},
    ])
    [said] = headline.elsewhere_finding(methods, "")
    assert "lower on 1, unclear on 1 of 2 entries" in said and "reptile on MCF7" in said
    assert "0.580 against otsu-texture 0.620, -0.040 [-0.090, +0.010]" in said
    assert headline.elsewhere_finding(methods.iloc[:0], "") == []


def test_the_budget_finding_counts_the_orders_that_already_held():
    held = [{"line": "MCF7", "k": 3, "seed": 0, "last": 100, "half": 50, "final": ["reptile", "maml"], "early": ["reptile", "maml"]},
            {"line": "A172", "k": 3, "seed": 0, "last": 100, "half": 50, "final": ["reptile", "maml"], "early": ["maml", "reptile"]}]
    said = headline.budget_finding(held, "")
    assert "already the final one on 1 of 2" in said
    assert "the leader was already the final one on 1 of 2 (not on A172, k = 3, seed 0: maml at step 50, reptile at the end)" in said
    third = {**held[0], "line": "BV-2", "final": ["reptile", "maml", "anil"], "early": ["reptile", "anil", "maml"]}
    assert "already the final one on 1 of 2 (held-out line, k, seed) combinations; the leader was already the final one on 2 of 2 (" \
        in headline.budget_finding([held[0], third], "")
    assert headline.budget_finding([], "") is None
