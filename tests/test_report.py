"""``report`` on fabricated results folders written in the store's exact schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.cli import main as cli_main
from benchmark.numerics import NUMERICS_VERSION
from benchmark.report import build_report
from benchmark.report.records import completed_runs, load_episodes, load_units, machine_counts
from benchmark.report.summaries import cell_summary, paired_differences
from benchmark.stats import holm, mean_ci, verdict
from tasks.catalogue import LINES
from tasks.errors import DataError

ALL_LINES = [line.name for line in LINES]
GAIN = {"maml": 0.25, "fomaml": 0.2, "reptile": 0.15, "finetune": 0.05}
IMAGES_PER_LINE, QUERIES = 6, 2  # fabricated test images per line, query crops per episode


def write_results(
    root: Path,
    algos=("maml", "finetune"),
    holdouts=("MCF7", "A172"),
    ks=(1, 3),
    seeds=(0,),
    episodes: int = 12,
    seen_episodes: int = 4,
    steps: int = 3,
    preset: str = "smoke",
    data_root: str | None = None,
    status: str = "completed",
    examples: bool = True,
    compressed: bool = False,
    images: bool = True,
) -> Path:
    """A results folder as the store writes it: runs/<id>/{summary.json, episodes.csv[.gz], images.csv[.gz],
    examples.npz}; ``images=False`` leaves out the per-image records, as runs written before them.

    Each episode has QUERIES query crops from IMAGES_PER_LINE test images per line (drawn independently of the
    algorithm and k, like the benchmark's episodes). Crop IoU = 0.4 + line effect + seed effect + image effect +
    (algorithm gain x k/3) x step/steps + episode noise + a little algorithm-specific noise; the image and episode
    effects are shared by all algorithms (identical episodes).
    """
    for algo in algos:
        for holdout in holdouts:
            for k in ks:
                for seed in seeds:
                    run_id = f"{algo}-{holdout}-k{k}-s{seed}"
                    folder = root / "runs" / run_id
                    folder.mkdir(parents=True)
                    rows, crops = [], []
                    for li, line in enumerate(ALL_LINES):
                        role = "held-out" if line == holdout else "seen"
                        image_effect = np.random.default_rng([li, 99]).normal(0, 0.08, IMAGES_PER_LINE)
                        for episode in range(episodes if role == "held-out" else seen_episodes):
                            queries = np.random.default_rng([li, seed, episode, 7]).permutation(IMAGES_PER_LINE)[:QUERIES]
                            noise = np.random.default_rng([li, k, seed, episode]).normal(0, 0.05)
                            own = np.random.default_rng([li, k, seed, episode, len(algo)]).normal(0, 0.01)
                            base = 0.4 + 0.02 * li + 0.03 * seed + noise + own + image_effect[queries]
                            for step in range(steps + 1):
                                iou = np.clip(base + GAIN[algo] * k / 3 * step / steps, 0, 1)
                                rows.append((run_id, algo, holdout, k, seed, line, role, episode, step, iou.mean()))
                                crops += [(run_id, algo, holdout, k, seed, line, role, 1000 * li + int(q), step, v)
                                          for q, v in zip(queries, iou)]
                    columns = ["run_id", "algo", "holdout", "k", "seed", "line", "role", "episode", "step", "iou"]
                    suffix = ".csv.gz" if compressed else ".csv"
                    pd.DataFrame(rows, columns=columns).to_csv(folder / f"episodes{suffix}", index=False)
                    if images:
                        per_crop = pd.DataFrame(crops, columns=[c if c != "episode" else "image_id" for c in columns])
                        keys = [c for c in per_crop.columns if c != "iou"]
                        per_image = per_crop.groupby(keys, sort=False, as_index=False).agg(iou=("iou", "mean"), crops=("iou", "size"))
                        per_image.to_csv(folder / f"images{suffix}", index=False)
                    config = {"algo": algo, "holdout": holdout, "k": k, "seed": seed, "preset": preset,
                              "data_root": data_root, "inner_steps": steps}
                    summary = {"run_id": run_id, "status": status, "config": config, "wall_s": 1.0,
                               "data": data_root or "synthetic-v6", "numerics_version": NUMERICS_VERSION,
                               "peak_mem_mb": 100.0, "passes": 10, "error": None}
                    (folder / "summary.json").write_text(json.dumps(summary))
                    if examples:
                        rng = np.random.default_rng([k, seed])
                        truth = rng.random((2, 16, 16)) > 0.5
                        np.savez(folder / "examples.npz", image=(rng.random((2, 16, 16)) * 255).astype(np.uint8),
                                 truth=truth, prediction=truth ^ (rng.random((2, 16, 16)) > 0.8 - GAIN[algo]))
    return root


def episodes_of(root: Path) -> pd.DataFrame:
    """Every fabricated record, read back independently of the report code."""
    return pd.concat([pd.read_csv(p) for p in sorted(root.glob("runs/*/episodes.csv*"))], ignore_index=True)


def images_of(root: Path) -> pd.DataFrame:
    """Every fabricated per-image record, read back independently of the report code."""
    return pd.concat([pd.read_csv(p) for p in sorted(root.glob("runs/*/images.csv*"))], ignore_index=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = write_results(tmp_path_factory.mktemp("results"))
    out = root / "report"
    written = build_report(root, out)
    return root, out, written


def test_every_table_and_plot_is_written(report):
    root, out, written = report
    names = {p.relative_to(out).as_posix() for p in written}
    assert {
        "report.md", "tables/leave_one_line_out.md", "tables/leave_one_line_out.csv", "tables/per_holdout.md",
        "tables/per_holdout.csv", "tables/paired.md", "tables/paired.csv", "tables/published.md",
        "tables/published.csv", "tables/adaptation_curves.csv", "tables/k_effect.md", "tables/k_effect.csv",
        "tables/best_reference.md", "tables/best_reference.csv",
        "plots/held_out_bars.png",
        "plots/adaptation_curves.png", "plots/examples_A172_k1.png", "plots/examples_A172_k3.png",
        "plots/examples_MCF7_k1.png", "plots/examples_MCF7_k3.png",
    } == names
    from PIL import Image

    for png in out.glob("plots/*.png"):
        with Image.open(png) as image:
            assert min(image.size) > 200


def test_report_md_links_resolve(report):
    _, out, _ = report
    text = (out / "report.md").read_text()
    targets = re.findall(r"\]\(([^)]+)\)", text)
    assert len(targets) >= 10
    assert all((out / t).is_file() for t in targets), [t for t in targets if not (out / t).is_file()]


def test_leave_one_line_out_cells_match_an_independent_computation(report):
    root, out, _ = report
    raw, per_image = episodes_of(root), images_of(root)
    table = pd.read_csv(out / "tables" / "leave_one_line_out.csv")
    assert len(table) == 2 * 2 * 2  # algorithms x held-out lines x k
    for row in table.itertuples():
        mine = raw[(raw.algo == row.algo) & (raw.k == row.k) & (raw.holdout == row.holdout) & (raw.line == row.holdout)]
        final = mine[mine.step == mine.step.max()]
        images = per_image[(per_image.algo == row.algo) & (per_image.k == row.k) & (per_image.line == row.holdout)]
        images = images[(images.holdout == row.holdout) & (images.step == images.step.max())]
        ci = mean_ci(images.iou, images.seed, images.image_id, images.crops)  # the test images are the units
        assert (row.mean, row.low, row.high) == pytest.approx((ci.mean, ci.low, ci.high), abs=1e-6)
        assert row.mean == pytest.approx(final.iou.mean(), abs=1e-6)  # the mean over crops = over episodes
        assert row.episodes == 12 and row.seeds == 1 and 1 < row.images == images.image_id.nunique() <= IMAGES_PER_LINE
        assert row.step0 == pytest.approx(mine[mine.step == 0].iou.mean(), abs=1e-6)
        assert row.low < row.mean < row.high
    md = (out / "tables" / "leave_one_line_out.md").read_text()
    maml_k3 = table[(table.algo == "maml") & (table.k == 3) & (table.holdout == "MCF7")].iloc[0]
    assert f"{maml_k3['mean']:.3f} [{maml_k3.low:.3f}, {maml_k3.high:.3f}]" in md


def test_lines_in_catalogue_order_and_missing_cells_are_dashes(report):
    _, out, _ = report
    md = (out / "tables" / "leave_one_line_out.md").read_text().splitlines()
    assert md[0] == "| algorithm | k | " + " | ".join(ALL_LINES) + " | seeds | images | episodes |"
    rows = [line.split(" | ") for line in md[2:6]]
    assert [(r[0].strip("| "), r[1]) for r in rows] == [("maml", "1"), ("maml", "3"), ("finetune", "1"), ("finetune", "3")]
    for r in rows:  # run: A172 (column 2) and MCF7 (column 6); the rest not run
        cells = dict(zip(ALL_LINES, r[2:10]))
        assert cells["A172"] != "—" and cells["MCF7"] != "—"
        assert all(cells[line] == "—" for line in ALL_LINES if line not in ("A172", "MCF7"))


def test_per_holdout_table_marks_the_held_out_line_and_covers_all_eight(report):
    root, out, _ = report
    md = (out / "tables" / "per_holdout.md").read_text()
    assert "### A172 held out" in md and "### MCF7 held out" in md and "### BV-2 held out" not in md
    assert "**MCF7** (held out)" in md and "**A172** (held out)" in md
    table = pd.read_csv(out / "tables" / "per_holdout.csv")
    assert len(table) == 2 * 2 * 2 * 8
    assert set(table[table.line == table.holdout].role) == {"held-out"}
    assert set(table[table.line != table.holdout].role) == {"seen"}
    seen = table[(table.role == "seen")]
    assert set(seen.episodes) == {4}


def test_paired_comparisons_match_manual_pairing(report):
    root, out, _ = report
    raw = images_of(root)
    final = raw[(raw.step == raw.step.max()) & (raw.role == "held-out")]
    keys = ["holdout", "k", "seed", "line", "image_id"]
    merged = final[final.algo == "maml"].merge(final[final.algo == "finetune"], on=keys, suffixes=("", "_ft"))
    assert (merged.crops == merged.crops_ft).all()  # identical crops behind each pair
    table = pd.read_csv(out / "tables" / "paired.csv")
    assert set(table.algo) == {"maml"} and len(table) == 4
    for k in (1, 3):
        mine = table[table.k == k].set_index("line")
        expected_p = []
        for line in mine.index:
            pairs = merged[(merged.k == k) & (merged.line == line)]
            ci = mean_ci(pairs.iou - pairs.iou_ft, pairs.seed, pairs.image_id, pairs.crops)
            assert mine.loc[line, "pairs"] == len(pairs) == mine.loc[line, "images"] == pairs.image_id.nunique()
            assert mine.loc[line, "mean"] == pytest.approx(ci.mean, abs=1e-6)
            assert mine.loc[line, "p"] == pytest.approx(ci.p, rel=1e-5)
            expected_p.append(ci.p)
        assert mine["p_holm"].to_numpy() == pytest.approx(holm(expected_p), rel=1e-5)
        assert list(mine["verdict"]) == [verdict(m, p) for m, p in zip(mine["mean"], mine["p_holm"])]
        assert (mine["mean"] > 0).all()  # maml gains more per step than fine-tuning by construction
    md = (out / "tables" / "paired.md").read_text()
    assert "minus finetune" in md and "Holm p" in md and "verdict" in md


def test_the_effect_of_k_is_paired_per_image(report):
    root, out, _ = report
    raw = images_of(root)
    final = raw[(raw.step == raw.step.max()) & (raw.role == "held-out")]
    table = pd.read_csv(out / "tables" / "k_effect.csv")
    assert len(table) == 2 * 2 and set(table.k) == {3} and set(table.k_low) == {1}
    for row in table.itertuples():
        mine = final[(final.algo == row.algo) & (final.holdout == row.line)]
        pairs = mine[mine.k == 3].merge(mine[mine.k == 1], on=["seed", "line", "image_id"], suffixes=("", "_1"))
        assert (pairs.crops == pairs.crops_1).all()  # both k score the same query crops
        ci = mean_ci(pairs.iou - pairs.iou_1, pairs.seed, pairs.image_id, pairs.crops)
        assert (row.mean, row.low, row.high, row.p) == pytest.approx((ci.mean, ci.low, ci.high, ci.p), rel=1e-5)
        assert row.mean > 0  # gain scales with k by construction
    assert "## The effect of k" in (out / "report.md").read_text()


def test_practical_threshold_is_a_report_setting(tmp_path, capsys):
    root = write_results(tmp_path / "results", algos=("maml", "finetune"), holdouts=("MCF7",), ks=(1,), examples=False)
    build_report(root, tmp_path / "strict", threshold=0.0)
    build_report(root, tmp_path / "lenient", threshold=0.5)
    strict = pd.read_csv(tmp_path / "strict" / "tables" / "paired.csv").iloc[0]
    lenient = pd.read_csv(tmp_path / "lenient" / "tables" / "paired.csv").iloc[0]
    assert strict.p == lenient.p and strict.verdict == verdict(strict["mean"], strict.p_holm, 0.0) != "no difference"
    assert lenient.verdict == "no difference"
    assert "smaller than 0.5 IoU" in (tmp_path / "lenient" / "report.md").read_text()
    assert cli_main(["report", "--results", str(root), "--out", str(tmp_path / "cli"), "--practical-difference", "0.5"]) == 0
    assert pd.read_csv(tmp_path / "cli" / "tables" / "paired.csv").verdict.eq("no difference").all()
    capsys.readouterr()
    assert "--practical-difference must be" in _error_line(capsys, ["report", "--results", str(root), "--practical-difference", "-1"])


def test_per_image_records_of_one_protocol_at_a_time(tmp_path):
    root = write_results(tmp_path, algos=("maml",), holdouts=("MCF7",), ks=(1,), examples=False)
    path = root / "runs" / "maml-MCF7-k1-s0" / "images.csv"
    seed = pd.read_csv(path).assign(protocol="seed")
    pd.concat([seed, seed.assign(protocol="tuned", iou=seed.iou / 2)]).to_csv(path, index=False)
    runs = completed_runs(root)
    units = {protocol: load_units(runs, load_episodes(runs, protocol), protocol) for protocol in ("seed", "tuned")}
    assert len(units["seed"]) == len(units["tuned"]) == len(seed)
    assert units["tuned"].iou.sum() == pytest.approx(units["seed"].iou.sum() / 2)


def test_records_without_per_image_rows_fall_back_to_episodes_and_say_so(tmp_path):
    root = write_results(tmp_path, algos=("maml", "finetune"), holdouts=("MCF7",), ks=(1, 3), images=False, examples=False)
    build_report(root, root)
    raw = episodes_of(root)
    final = raw[(raw.algo == "maml") & (raw.k == 1) & (raw.line == "MCF7") & (raw.step == raw.step.max())]
    row = pd.read_csv(root / "tables" / "leave_one_line_out.csv").query("algo == 'maml' and k == 1").iloc[0]
    ci = mean_ci(final.iou)
    assert (row["mean"], row.low, row.high) == pytest.approx((ci.mean, ci.low, ci.high), abs=1e-6)
    assert row.images == 0
    assert "predate per-image records" in (root / "report.md").read_text()
    assert "No k comparisons" in (root / "tables" / "k_effect.md").read_text()


def test_published_numbers_are_beside_ours_and_marked(report):
    _, out, _ = report
    md = (out / "tables" / "published.md").read_text()
    for value in ("0.526", "0.881", "0.421", "0.696"):
        assert value in md
    assert "real LIVECell" in md
    index = (out / "report.md").read_text()
    assert "a different setting" in index and md in index
    assert "These runs use the synthetic LIVECell look-alike" in index
    table = pd.read_csv(out / "tables" / "published.csv")
    assert table["mean"].notna().all()  # MCF7 was held out for both maml and finetune, k = 1 and 3


def test_published_row_missing_when_mcf7_not_run(tmp_path):
    root = write_results(tmp_path, algos=("maml",), holdouts=("A172",), ks=(3,), examples=False)
    build_report(root, root)
    rows = (root / "tables" / "published.md").read_text().splitlines()[2:]
    assert all(row.endswith("| — |") for row in rows)
    assert "No paired comparisons" in (root / "tables" / "paired.md").read_text()
    assert "No run in this folder kept example predictions" in (root / "report.md").read_text()
    assert not list(root.glob("plots/examples_*.png"))


def test_several_seeds_cross_with_the_images(tmp_path):
    root = write_results(tmp_path, algos=("reptile", "finetune"), holdouts=("BV-2",), ks=(1,), seeds=(0, 1, 2))
    build_report(root, root / "out")
    raw = images_of(root)
    row = pd.read_csv(root / "out" / "tables" / "leave_one_line_out.csv").query("algo == 'reptile'").iloc[0]
    final = raw[(raw.algo == "reptile") & (raw.line == "BV-2") & (raw.step == raw.step.max())]
    ci = mean_ci(final.iou, final.seed, final.image_id, final.crops)
    assert (row["mean"], row.low, row.high) == pytest.approx((ci.mean, ci.low, ci.high), abs=1e-6)
    assert row.seeds == 3 and row.episodes == 36 and row.images == final.image_id.nunique()  # images shared by the seeds
    without_seeds = mean_ci(final.iou, None, final.image_id, final.crops)
    assert row.high - row.low > without_seeds.high - without_seeds.low  # seeds differ by construction
    paired = pd.read_csv(root / "out" / "tables" / "paired.csv")
    assert paired.loc[0, "pairs"] == len(final) and paired.loc[0, "seeds"] == 3


def test_partial_sweep_failed_and_unfinished_runs_are_left_out(tmp_path):
    root = write_results(tmp_path, algos=("maml",), holdouts=("MCF7",), ks=(1,))
    write_results(tmp_path, algos=("reptile",), holdouts=("MCF7",), ks=(1,), status="failed")
    unfinished = tmp_path / "runs" / "unfinished"
    unfinished.mkdir()
    (unfinished / "episodes.csv").write_text("garbage")
    runs = completed_runs(root)
    assert list(runs.algo) == ["maml"]
    assert set(load_episodes(runs).algo) == {"maml"}


def test_only_the_final_step_is_the_headline(tmp_path):
    root = write_results(tmp_path, algos=("maml",), holdouts=("MCF7",), ks=(3,), steps=5)
    runs = completed_runs(root)
    cells = cell_summary(load_units(runs, load_episodes(runs)))
    held = cells[cells.line == "MCF7"].iloc[0]
    raw = episodes_of(root)
    assert held["mean"] == pytest.approx(raw[(raw.line == "MCF7") & (raw.step == 5)].iou.mean())
    assert held["step0"] == pytest.approx(raw[(raw.line == "MCF7") & (raw.step == 0)].iou.mean())


def test_unmatched_episodes_are_not_paired(tmp_path):
    root = write_results(tmp_path, algos=("maml", "finetune"), holdouts=("MCF7",), ks=(1,), examples=False)
    path = root / "runs" / "finetune-MCF7-k1-s0" / "images.csv"
    frame = pd.read_csv(path)
    dropped = (frame.line == "MCF7") & (frame.image_id % 1000 >= 4)
    frame[~dropped].to_csv(path, index=False)
    runs = completed_runs(root)
    table = paired_differences(load_units(runs, load_episodes(runs)))
    assert table.loc[0, "pairs"] == frame[(frame.line == "MCF7") & ~dropped].image_id.nunique() < frame[frame.line == "MCF7"].image_id.nunique()


def test_gzipped_records_and_reproducible_output(tmp_path):
    root = write_results(tmp_path, algos=("maml", "finetune"), holdouts=("SkBr3",), ks=(1,), compressed=True, examples=False)
    build_report(root, tmp_path / "a")
    build_report(root, tmp_path / "b")
    for name in ("leave_one_line_out.csv", "paired.csv", "k_effect.csv", "adaptation_curves.csv", "per_holdout.csv"):
        assert (tmp_path / "a" / "tables" / name).read_text() == (tmp_path / "b" / "tables" / name).read_text()


def test_stale_example_plots_are_removed(tmp_path):
    root = write_results(tmp_path, algos=("maml",), holdouts=("MCF7",), ks=(1,))
    (root / "plots").mkdir()
    (root / "plots" / "examples_A172_k3.png").write_bytes(b"old")
    build_report(root, root)
    assert sorted(p.name for p in root.glob("plots/examples_*.png")) == ["examples_MCF7_k1.png"]


def _error_line(capsys, argv) -> str:
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_cli_report_end_to_end(tmp_path, capsys):
    root = write_results(tmp_path / "results", algos=("fomaml", "finetune"), holdouts=("Huh7",), ks=(1,))
    assert cli_main(["report", "--results", str(root)]) == 0
    assert (root / "report.md").is_file() and (root / "plots" / "held_out_bars.png").is_file()
    assert cli_main(["report", "--results", str(root), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "tables" / "paired.md").is_file()
    assert "report.md" in capsys.readouterr().err


def test_cli_refuses_a_folder_that_is_not_a_results_folder(tmp_path, capsys):
    assert "not a results folder" in _error_line(capsys, ["report", "--results", str(tmp_path / "nowhere")])
    (tmp_path / "runs").mkdir()
    assert "no completed runs" in _error_line(capsys, ["report", "--results", str(tmp_path)])


def test_mixed_settings_data_and_duplicate_runs_are_refused(tmp_path, capsys):
    write_results(tmp_path / "a", algos=("maml",), holdouts=("MCF7",), ks=(1,), steps=3)
    write_results(tmp_path / "a", algos=("finetune",), holdouts=("MCF7",), ks=(1,), steps=5)
    assert "different settings (inner_steps: 5 vs 3" in _error_line(capsys, ["report", "--results", str(tmp_path / "a")])
    write_results(tmp_path / "c", algos=("maml",), holdouts=("MCF7",), ks=(1,), data_root="/data/livecell")
    write_results(tmp_path / "c", algos=("finetune",), holdouts=("MCF7",), ks=(1,))
    assert "data: 'synthetic-v6' vs '/data/livecell'" in _error_line(capsys, ["report", "--results", str(tmp_path / "c")])
    # the same settings reached through two presets are one setting
    write_results(tmp_path / "d", algos=("maml",), holdouts=("MCF7",), ks=(1,), preset="default")
    write_results(tmp_path / "d", algos=("finetune",), holdouts=("MCF7",), ks=(1,), preset="mine")
    assert cli_main(["report", "--results", str(tmp_path / "d"), "--out", str(tmp_path / "d-report")]) == 0
    root = write_results(tmp_path / "b", algos=("maml",), holdouts=("MCF7",), ks=(1,))
    twin = root / "runs" / "twin"
    twin.mkdir()
    for name in ("summary.json", "episodes.csv"):
        (twin / name).write_bytes((root / "runs" / "maml-MCF7-k1-s0" / name).read_bytes())
    with pytest.raises(DataError, match="2 completed runs of maml, held-out MCF7, k=1, seed 0"):
        completed_runs(root)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: f.drop(columns=["iou"]), "missing columns iou"),
        (lambda f: f.assign(line=f.line.replace("MCF7", "HeLa")), "unknown cell line"),
        (lambda f: f.assign(role="train"), "unknown role"),
        (lambda f: f.assign(iou=f.iou * 3), r"iou must be numbers in \[0, 1\]"),
    ],
)
def test_malformed_records_name_the_file(tmp_path, damage, message):
    root = write_results(tmp_path, algos=("maml",), holdouts=("MCF7",), ks=(1,), examples=False)
    path = root / "runs" / "maml-MCF7-k1-s0" / "episodes.csv"
    damage(pd.read_csv(path)).to_csv(path, index=False)
    with pytest.raises(DataError, match=message) as err:
        load_episodes(completed_runs(root))
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "damage, message",
    [(lambda f: f.drop(columns=["crops"]), "missing columns crops"), (lambda f: f.assign(crops=0), "crops must be positive")],
)
def test_malformed_image_records_name_the_file(tmp_path, damage, message):
    root = write_results(tmp_path, algos=("maml",), holdouts=("MCF7",), ks=(1,), examples=False)
    path = root / "runs" / "maml-MCF7-k1-s0" / "images.csv"
    damage(pd.read_csv(path)).to_csv(path, index=False)
    with pytest.raises(DataError, match=message) as err:
        build_report(root, root)
    assert str(path) in str(err.value)


def test_broken_summary_and_missing_records_name_the_file(tmp_path):
    root = write_results(tmp_path, algos=("maml",), holdouts=("MCF7",), ks=(1,), examples=False)
    run = root / "runs" / "maml-MCF7-k1-s0"
    (run / "episodes.csv").unlink()
    with pytest.raises(DataError, match="without episodes.csv"):
        load_episodes(completed_runs(root))
    (run / "summary.json").write_text("{not json")
    with pytest.raises(DataError, match="summary.json: not valid JSON"):
        completed_runs(root)


def test_bad_examples_file_is_reported(tmp_path):
    root = write_results(tmp_path, algos=("maml",), holdouts=("MCF7",), ks=(1,))
    np.savez(root / "runs" / "maml-MCF7-k1-s0" / "examples.npz", image=np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(DataError, match="missing array.*truth, prediction"):
        build_report(root, root)


def test_stale_runs_are_left_out_counted_and_never_mixed_in(tmp_path):
    results = tmp_path / "results"
    write_results(results, algos=("maml", "finetune"), holdouts=("MCF7",), ks=(3,))
    stale = sorted((results / "runs").iterdir())[0] / "summary.json"
    summary = json.loads(stale.read_text())
    stale.write_text(json.dumps({**summary, "numerics_version": NUMERICS_VERSION - 1}))
    build_report(results, results)
    index = (results / "report.md").read_text()
    assert f"1 stale run(s) left out: 1 of numerics version {NUMERICS_VERSION - 1}" in index
    assert summary["run_id"] not in set(completed_runs(results).run_id)


def test_the_report_names_the_machines_that_computed_its_runs(tmp_path):
    results = write_results(tmp_path / "results", algos=("maml", "finetune"), holdouts=("MCF7", "A172"), ks=(3,), examples=False)
    machines = {"maml-MCF7-k3-s0": "AMD EPYC (AVX512 kernels), x86_64, 2 CPUs", "maml-A172-k3-s0": "x86_64, 2 CPUs",
                "finetune-MCF7-k3-s0": "AMD EPYC (AVX512 kernels), x86_64, 2 CPUs"}  # finetune-A172: no config.json
    for run_id, machine in machines.items():
        (results / "runs" / run_id / "config.json").write_text(json.dumps({"run_id": run_id, "machine": machine}))
    assert machine_counts(completed_runs(results)) == {"AMD EPYC (AVX512 kernels), x86_64, 2 CPUs": 2, "not recorded": 1,
                                                       "x86_64, 2 CPUs": 1}
    build_report(results, results)
    assert ("2 on AMD EPYC (AVX512 kernels), x86_64, 2 CPUs; 1 recorded before runs named their machine; 1 on x86_64, "
            "2 CPUs.") in (results / "report.md").read_text()
    (results / "runs" / "maml-A172-k3-s0" / "config.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="maml-A172-k3-s0/config.json: not a run configuration"):
        build_report(results, results)


def test_budget_curves_come_from_the_training_logs_and_say_whether_a_ranking_held_at_half(tmp_path):
    from benchmark.report import budget

    rows = []
    for algo, early, late in (("reptile", 0.5, 0.8), ("finetune", 0.6, 0.7)):
        folder = tmp_path / algo
        folder.mkdir()
        pd.DataFrame(
            {"step": [0, 1, 2, 3, 4], "loss": [None, 1, 1, 1, 1], "passes": [0, 11, 11, 11, 11],
             "wall_s": [0, 1, 2, 3, 4], "val_iou_0": [0.1, None, 0.2, None, 0.3],
             "val_iou_n": [0.2, None, early, None, late]}
        ).to_csv(folder / "train_log.csv", index=False)
        (folder / "summary.json").write_text(json.dumps({"flops_per_step": [[0, 4, 10]]}))
        rows.append({"algo": algo, "holdout": "MCF7", "k": 3, "seed": 0, "folder": folder})
    rows.append({"algo": "maml", "holdout": "MCF7", "k": 3, "seed": 0, "folder": tmp_path / "absent"})  # no log
    points = budget.budget_points(pd.DataFrame(rows))
    assert sorted(points[points.algo == "reptile"].step) == [0, 2, 4]
    assert points[(points.algo == "reptile") & (points.step == 4)].passes.item() == 44  # passes spent so far
    assert points[(points.algo == "reptile") & (points.step == 4)].flops.item() == 40  # and FLOPs
    (said,) = budget.ranking_at_half(budget.orders_at_half(points))
    assert said == "MCF7, k = 3, seed 0: final order reptile > finetune (step 4); at step 2 it was finetune > reptile"
    assert budget.plot(points, tmp_path / "budget.png").stat().st_size > 0
