"""``report``: tables and plots from everything completed in a results folder.

Everything is a group-by over the per-image records the store wrote (:mod:`.records`), summarised
with intervals over test images and seeds (:mod:`.summaries`), rendered as Markdown/CSV (:mod:`.tables`)
and PNG (:mod:`.plots`), and indexed by ``report.md`` for the README to embed from.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.report import budget, evaluations, headline, plots, settings, tables
from benchmark.report.headline import rank_changes
from benchmark.report.records import (
    BASELINE, IMAGE, REFERENCE_SUFFIX, collapse_counts, completed_runs, load_episodes, load_units, machine_counts, stale_runs,
    unit_kind,
)
from benchmark.report.summaries import (
    LINE_ORDER, adaptation_curves, algo_order, cell_summary, held_out_against_best_reference, k_differences, ordered,
    paired_differences,
)
from benchmark.numerics import NUMERICS_VERSION
from benchmark.stats import PRACTICAL_DIFFERENCE
from tasks.errors import DataError

TABLES, PLOTS = "tables", "plots"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _csv(path: Path, frame: pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, float_format="%.6g")
    return path


def build_report(results: Path, out: Path, threshold: float = PRACTICAL_DIFFERENCE) -> list[Path]:
    """Write the report of ``results`` (a folder with ``runs/``) into ``out``; return the files written.

    ``threshold``: the practical difference in IoU below which a paired difference is reported as "no difference".
    """
    results, out = Path(results), Path(out)
    runs, stale_counts = completed_runs(results), stale_runs(results)
    if runs.empty:
        raise DataError(f"{results}: no completed runs of today's code under {results / 'runs'}{_stale_note(stale_counts)}")
    if not threshold >= 0:
        raise ValueError(f"the practical difference must be a non-negative IoU, got {threshold}")
    records = load_episodes(runs)
    units = load_units(runs, records)
    cells = cell_summary(units)
    curves = adaptation_curves(units)
    pairs = paired_differences(units, threshold)
    k_pairs = k_differences(units, threshold)
    tuned_records = load_episodes(runs, TUNED)
    tuned_units = load_units(runs, tuned_records, TUNED) if len(tuned_records) else None
    tuned_cells = cell_summary(tuned_units) if tuned_units is not None else None
    against_best = _against_best_reference({"seed": (units, cells), TUNED: (tuned_units, tuned_cells)}, threshold)

    written = []
    tuned_md = None
    if tuned_cells is not None:
        tuned_md, tuned_csv = tables.lolo(tuned_cells)
        written += [_write(out / TABLES / "leave_one_line_out_tuned.md", tuned_md),
                    _csv(out / TABLES / "leave_one_line_out_tuned.csv", tuned_csv)]
    lolo_md, lolo_csv = tables.lolo(cells)
    written += [_write(out / TABLES / "leave_one_line_out.md", lolo_md), _csv(out / TABLES / "leave_one_line_out.csv", lolo_csv)]
    seed_md, seed_csv = tables.seed_style(cells)
    written += [_write(out / TABLES / "per_holdout.md", "# Every line, per held-out line\n\n" + seed_md),
                _csv(out / TABLES / "per_holdout.csv", seed_csv)]
    paired_md = tables.paired(pairs) if len(pairs) else f"No paired comparisons: no `{BASELINE}` runs matching other algorithms' episodes.\n"
    written += [_write(out / TABLES / "paired.md", paired_md), _csv(out / TABLES / "paired.csv", ordered(pairs))]
    best_md = tables.best_reference(against_best) if len(against_best) else "No references in these records (runs recorded before references were).\n"
    written += [_write(out / TABLES / "best_reference.md", "# Each algorithm against the best reference\n\n" + best_md),
                _csv(out / TABLES / "best_reference.csv", against_best)]
    k_md = tables.k_effect(k_pairs) if len(k_pairs) else "No k comparisons: no algorithm has per-image records at two k.\n"
    written += [_write(out / TABLES / "k_effect.md", k_md), _csv(out / TABLES / "k_effect.csv", ordered(k_pairs))]
    published_md, published_csv = tables.published(cells)
    written += [_write(out / TABLES / "published.md", published_md), _csv(out / TABLES / "published.csv", published_csv)]
    written.append(_csv(out / TABLES / "adaptation_curves.csv", ordered(curves)))

    for old in (out / PLOTS).glob("examples_*.png"):  # examples of runs no longer in the folder
        old.unlink()
    written.append(plots.held_out_bars(cells, out / PLOTS / "held_out_bars.png"))
    written.append(plots.adaptation_curves(curves, out / PLOTS / "adaptation_curves.png"))
    budget_section, files, held = budget.section(runs, out, TABLES, PLOTS, _csv)
    written += files
    examples = []
    for line in [line for line in LINE_ORDER if line in set(runs["holdout"])]:
        for k in sorted(runs[runs["holdout"] == line]["k"].unique()):
            grid = plots.example_grid(runs, line, int(k), out / PLOTS / f"examples_{line}_k{k}.png")
            if grid:
                examples.append((line, int(k), grid))
    written += [grid for _, _, grid in examples]

    elsewhere, files, elsewhere_methods = evaluations.report(runs, out, TABLES, threshold)  # runs scored on other datasets (`evaluate`)
    written += files
    compared = settings.compare_all(results, runs, threshold)  # other settings of the grid in folders inside (results/long)
    settings_section, files = settings.report(compared, out, TABLES, threshold)
    written += files
    counts = collapse_counts(runs)
    if len(counts):
        written += [_write(out / TABLES / "collapse.md", "# Collapsed runs\n\n" + tables.collapse(counts)), _csv(out / TABLES / "collapse.csv", counts)]
    headline_section = ["## Headline\n", "No run in this folder recorded the tuned protocol (`adapt_rates`): no headline table and no findings.\n"]
    if tuned_cells is not None:
        headline_md, headline_csv = headline.headline(tuned_units, tuned_cells, runs, threshold)
        facts = {"seed_cells": cells, "tuned_cells": tuned_cells, "k_pairs": k_pairs, "counts": counts, "methods": elsewhere_methods, "held": held,
                 "settings": compared}
        written += [_write(out / TABLES / "headline.md", headline_md), _csv(out / TABLES / "headline.csv", headline_csv),
                    _write(out / TABLES / "findings.md", "# Findings\n\n" + headline.findings(**facts, to="")),
                    _write(out / README_BLOCK, headline_md + "\n" + headline.findings(**facts, to=f"{out.as_posix()}/{TABLES}/"))]
        headline_section = _headline_section(headline_md, headline.findings(**facts, to=TABLES + "/"))
    tuned_section = _tuned_section(cells, tuned_cells, tuned_md)
    index = _index(results, runs, records, units, threshold, lolo_md, published_md, examples, out, paired=len(pairs) > 0, stale=stale_counts,
                   tuned_section=tuned_section + budget_section, headline_section=headline_section)
    written.append(_write(out / "report.md", index + elsewhere + settings_section))
    return written


TUNED = "tuned"
README_BLOCK = "readme.md"  # the README's results block: the headline table and the findings, links from the repository root


def _against_best_reference(measured: dict, threshold: float) -> pd.DataFrame:
    """Each protocol's :func:`held_out_against_best_reference` (protocol -> (units, cells), None where not
    measured), the protocol in front, in the report's order within each protocol."""
    frames = [ordered(held_out_against_best_reference(units, cells, threshold)).assign(protocol=protocol)
              for protocol, (units, cells) in measured.items() if units is not None]
    table = pd.concat(frames, ignore_index=True)
    return table[["protocol", *table.columns.drop("protocol")]]


def _stale_note(stale: dict[str, int]) -> str:
    if not stale:
        return ""
    found = ", ".join(f"{n} of numerics version {version}" for version, n in sorted(stale.items()))
    return (f" ({sum(stale.values())} stale run(s) left out: {found}; today's is {NUMERICS_VERSION}; "
            "rerun them with `python -m benchmark sweep`)")


def _machines(counts: dict[str, int]) -> str:
    """The report's line naming the machines that computed its runs (``config.json``, ``machine``)."""
    said = "; ".join(f"{n} on {machine}" if machine != "not recorded" else
                     f"{n} recorded before runs named their machine" for machine, n in counts.items())
    return (f"Computed on (each run's `config.json`, `machine`: processor, torch's CPU kernels, cores): {said}. The "
            "last bits of CPU kernels differ between machines, and a short meta-training can amplify them "
            "(`docs/performance.md` in the repository).\n")


def _headline_section(headline_md: str, findings_md: str) -> list[str]:
    return [
        "## Headline\n",
        "The README's results table, embedded there verbatim (a test compares the two). "
        f"[Markdown]({TABLES}/headline.md), [CSV]({TABLES}/headline.csv) (each column's best entry with its paired "
        "difference to the runner-up).\n",
        headline_md,
        "## Findings\n",
        "Sentences generated from the tables they name; only those whose data these records hold. "
        f"[Markdown]({TABLES}/findings.md).\n",
        findings_md,
    ]


def _tuned_section(cells, tuned_cells, tuned_md) -> list[str]:
    if tuned_cells is None:
        return ["## Tuned protocol\n", "No run in this folder selected an adaptation rate (`adapt_rates`).\n"]
    changes = rank_changes(cells, tuned_cells)
    said = ("The order of the algorithms changes between the protocols on: " + "; ".join(changes) + ".\n") if changes \
        else "The order of the algorithms on every held-out cell is the same under both protocols.\n"
    return [
        "## Tuned protocol\n",
        "The same runs and episodes, each algorithm adapted at the rate it selected on validation episodes of its "
        "meta-training lines (never the held-out line; `adapt_rates`), with the same number of steps (one that "
        "meta-learns its rates keeps them, so its rows equal the seed protocol's); the table above "
        "is the seed protocol (the published rate for everyone). " + said,
        tuned_md,
        f"Data: [CSV]({TABLES}/leave_one_line_out_tuned.csv).\n",
    ]


def _index(results, runs, records, units, threshold, lolo_md, published_md, examples, out: Path, paired: bool,
           stale: dict[str, int], tuned_section: list[str], headline_section: list[str]) -> str:
    """``report.md``: what was measured, the headline table inline, links to everything else."""
    steps = sorted(records.loc[records["final"], "step"].unique())
    preset = ", ".join(f"`{p}`" for p in sorted(set(map(str, runs["preset"]))))
    source = str(runs["data"].iloc[0])  # one data set per folder (records.completed_runs)
    data = f"the synthetic LIVECell look-alike ({source})" if source.startswith("synthetic") else f"LIVECell at `{source}`"
    own = records[~records["algo"].str.endswith(REFERENCE_SUFFIX)]
    episodes = own[own["final"] & (own["role"] == "held-out")].groupby("run_id").size()
    held_units = units[units["final"] & (units["role"] == "held-out")]
    held_images = held_units.groupby(["algo", "k", "holdout"])["unit"].agg(lambda u: u[u.str.startswith(IMAGE + " ")].nunique())
    unit_warning = [] if unit_kind(units["unit"]) == IMAGE else [
        "**Some runs predate per-image records** (no `images.csv.gz`): their intervals and tests treat episodes "
        "as independent, which overstates precision; rerun them (`--force`) for image-level statistics.\n"
    ]
    parts = [
        "# Results\n",
        f"Generated by `python -m benchmark report` from {len(runs)} completed run(s) in `{results}`"
        f" (preset {preset}; data: {data}; algorithms {', '.join(algo_order(runs['algo'].unique()))}; k = "
        f"{', '.join(map(str, sorted(runs['k'].unique())))}; seeds {', '.join(map(str, sorted(runs['seed'].unique())))}).\n",
        "Cells are the mean IoU over the query crops of all evaluation episodes after the final adaptation step "
        f"(step {', '.join(map(str, steps))}) with a 95% confidence interval whose units are what varies: the test "
        "images (and the seeds, where there are several), not the episodes, which reuse the same images. With one "
        "seed the interval speaks for that meta-trained model only. Method and simulated coverage: "
        "`docs/statistics.md` in the repository. "
        f"Held-out episodes per run: {tables.span(episodes)}; distinct test images per held-out cell: "
        f"{tables.span(held_images)}. \"{tables.MISSING}\" marks a combination not run yet.\n",
        _machines(machine_counts(runs)),
        *unit_warning,
        *([f"Left out:{_stale_note(stale)}.\n"] if stale else []),
        "Rows marked \"(reference)\" score, on exactly the same support and query crops: `all-foreground` (every "
        "pixel cell: the crops' cell cover, what a collapsed model scores), `otsu` (Otsu's threshold of each query "
        "image, which side is cell chosen on the support set), `otsu-texture` (the same on a local standard-deviation "
        "map) and `scratch` (the untrained initialisation adapted with the same protocol). An algorithm at or below "
        "the best of them has learnt nothing that a threshold or a few gradient steps on the support images do not "
        "give. Runs recorded before references were have none.\n",
        *headline_section,
        "## Leave one line out\n",
        "Each column is a run with that line held out of meta-training; the cell is IoU on that line.\n",
        lolo_md,
        f"Data: [CSV]({TABLES}/leave_one_line_out.csv).\n",
        f"![Held-out IoU per line]({PLOTS}/held_out_bars.png)\n",
        *tuned_section,
        "## Adaptation curves\n",
        "IoU on the held-out line against adaptation step; step 0 is the meta-learned initialisation before adapting.\n",
        f"![Adaptation curves]({PLOTS}/adaptation_curves.png)\n",
        f"Data: [CSV]({TABLES}/adaptation_curves.csv).\n",
        "## Every line, per held-out line\n",
        f"The seed paper's table layout: for each held-out line, IoU on all eight lines (seven seen in meta-training, "
        f"on their test split). [Markdown]({TABLES}/per_holdout.md), [CSV]({TABLES}/per_holdout.csv).\n",
        *(
            [
                f"## Paired comparisons against `{BASELINE}`\n",
                "Each algorithm minus fine-tuning on identical held-out crops, paired per test image: mean difference "
                "with 95% CI, the p of a t-test over images and seeds, Holm-corrected across the lines of each "
                f"algorithm and k. A difference smaller than {threshold:g} IoU is reported as \"no difference\", "
                "whatever its p; otherwise \"higher\" or \"lower\" when Holm p < 0.05, else \"unclear\". "
                f"[Markdown]({TABLES}/paired.md), [CSV]({TABLES}/paired.csv).\n",
            ]
            if paired
            else []
        ),
        "## Against the best reference\n",
        "Each algorithm minus the best reference of its held-out line and k: of `all-foreground`, `otsu`, "
        "`otsu-texture` and `scratch`, the one with the highest mean IoU on these very test episodes. It is chosen on "
        "the test episodes, so it is a floor an algorithm has to clear, not a method one could have picked in "
        "advance; the references do not depend on the adaptation rate, so it is the same under both protocols. The "
        "difference is paired per test image (and seed) on identical crops, with the same interval, t-test, Holm "
        f"correction across the lines of each algorithm and k, and verdicts: below {threshold:g} IoU \"no "
        "difference\", else \"higher\" or \"lower\" when Holm p < 0.05, else \"unclear\". \"Lower\" or \"no "
        "difference\" means the algorithm has not beaten a threshold or a few gradient steps from scratch. "
        f"[Markdown]({TABLES}/best_reference.md), [CSV]({TABLES}/best_reference.csv).\n",
        "## The effect of k\n",
        "Each algorithm's held-out IoU at k = 3 minus k = 1 (the larger k minus the smaller): the episodes of both "
        "k share their query crops, so the difference is paired per test image, with the same t-test, Holm across "
        f"the lines of each algorithm, and the same verdicts (below {threshold:g} IoU: \"no difference\"). "
        f"[Markdown]({TABLES}/k_effect.md), [CSV]({TABLES}/k_effect.csv).\n",
        "## The seed paper's published numbers (a different setting)\n",
        "The seed paper meta-trained a U-Net with a VGG-11 encoder on the real LIVECell images and held out MCF7. "
        f"These runs use {data} and the model of preset `{preset}`, so the two columns come from different settings "
        "and are not comparable numbers; they stand side by side only so readers see both.\n",
        published_md,
        "## Example predictions\n",
    ]
    if examples:
        parts += [f"- [{line} held out, k={k}]({grid.relative_to(out).as_posix()})" for line, k, grid in examples]
        parts.append("")
    else:
        parts.append("No run in this folder kept example predictions (`examples.npz`).\n")
    return "\n".join(parts) + "\n"
