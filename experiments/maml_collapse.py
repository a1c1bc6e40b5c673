"""Does second-order MAML leave the all-foreground fixed point? (issue 13 section 1; docs/maml-collapse.md)

    python experiments/maml_collapse.py commands [--out DIR] [--stage screen|confirm]   # the runs, as shell lines
    python experiments/maml_collapse.py table [--out DIR]                               # measure finished runs
    python experiments/maml_collapse.py curves [--out DIR]                              # budget curves so far

``commands`` prints the ``benchmark run`` line of every (candidate, held-out line, k, seed) of a stage: the
default preset's meta-training, evaluation cut to 16 held-out episodes (no seen lines, no rate selection).
``table`` loads every finished maml run under DIR (its checkpoint and its held-out evaluation episodes, rebuilt
from the stored configuration exactly as the run built them) and prints, per run: the query pixels predicted as
cell before and after adaptation (fg_0, fg_n), adapted IoU (iou_n, also checked against the run's own records),
the all-foreground reference IoU on the same query images (iou_allfg) and whether the run learns (iou_n at least
0.05 above iou_allfg and fg_n below 0.95). ``curves`` prints every run's budget curve, finished or not: validation
IoU (meta-training lines' val split) before and after adaptation every 25 meta-steps.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import pandas as pd
import torch

from algorithms import load_checkpoint
from algorithms.losses import iou
from benchmark.evaluation import evaluation_episodes
from benchmark.config import FIELDS, RunConfig
from tasks.episodes import stack_episodes
from tasks.livecell import open_livecell

# candidate -> maml options (--opt); "maml" is the algorithm as it is. 0.35: the mean cell cover of the default
# preset's meta-training crops (MCF7 held out, the first 60 meta-steps' support and query masks).
CANDIDATES = {
    "maml": {},
    "init_fg": {"init_foreground": 0.35},
    "adam_short_clip": {"outer_beta2": 0.95, "clip_norm": 1.0},
    "multi_step": {"multi_step_loss": 50},
    "init_fg+adam_short_clip": {"init_foreground": 0.35, "outer_beta2": 0.95, "clip_norm": 1.0},
    "adam_short_clip0.1": {"outer_beta2": 0.95, "clip_norm": 0.1},
}
STAGES = {
    "screen": {"holdouts": ["MCF7"], "ks": [1], "seeds": [0], "candidates": list(CANDIDATES)},
    "confirm": {"holdouts": ["MCF7", "BV-2"], "ks": [3], "seeds": [0, 1, 2], "candidates": ["adam_short_clip0.1"]},
}
CUT = "--seen-episodes 0 --eval-episodes 16 --adapt-rates none --budget-every 25"
LEARNS_MARGIN, COLLAPSED_FG = 0.05, 0.95


def commands(out: str, stage: str) -> list[str]:
    plan = STAGES[stage]
    lines = []
    for name in plan["candidates"]:
        opts = "".join(f" --opt {k}={v}" for k, v in CANDIDATES[name].items())
        for holdout in plan["holdouts"]:
            for k in plan["ks"]:
                for seed in plan["seeds"]:
                    lines.append(
                        f"OMP_NUM_THREADS=1 python -m benchmark run --algo maml --holdout {holdout} --k {k} --seed {seed} "
                        f"{CUT}{opts} --out {out}"
                    )
    return lines


def stored_config(folder: Path) -> RunConfig:
    stored = json.loads((folder / "config.json").read_text())
    values = {name: stored[name] for name in FIELDS if name in stored}
    values["algo_options"] = tuple(sorted(stored.get("algo_options", {}).items()))
    values["adapt_rates"] = tuple(stored.get("adapt_rates", ()))
    return RunConfig(**values)


def candidate_of(config: RunConfig) -> str:
    return next((name for name, opts in CANDIDATES.items() if opts == config.options), str(config.options))


def measure(folder: Path) -> dict:
    """fg_0, fg_n, iou_n and iou_allfg of a finished run on its held-out evaluation episodes (means over query images)."""
    config = stored_config(folder)
    algo, state = load_checkpoint(folder / "checkpoint.pt")
    data = open_livecell(config.data_root)
    fg, scores, allfg = {0: [], config.inner_steps: []}, [], []
    for first in range(0, config.eval_episodes, config.eval_batch):
        indices = range(first, min(config.eval_episodes, first + config.eval_batch))
        batch = stack_episodes(evaluation_episodes(config, data, config.holdout, indices))
        queries, truth = batch.query_x, batch.query_y.flatten(0, 1)
        for step, params in algo.adapt(state, batch.support_x, batch.support_y):
            if step in fg:
                logits = algo.predict(params, queries).flatten(0, 1)
                fg[step].append((logits > 0).float().mean(dim=(1, 2, 3)))
                if step == config.inner_steps:
                    scores.append(iou(logits, truth))
        allfg.append(iou(torch.ones_like(truth), truth))
    row = {
        "candidate": candidate_of(config),
        "holdout": config.holdout,
        "k": config.k,
        "seed": config.seed,
        "fg_0": float(torch.cat(fg[0]).mean()),
        "fg_n": float(torch.cat(fg[config.inner_steps]).mean()),
        "iou_n": float(torch.cat(scores).mean()),
        "iou_allfg": float(torch.cat(allfg).mean()),
    }
    recorded = records_iou(folder, config)
    if abs(recorded - row["iou_n"]) > 1e-4:
        raise SystemExit(f"{folder}: measured adapted IoU {row['iou_n']:.5f} but the run recorded {recorded:.5f}")
    row["learns"] = row["iou_n"] >= row["iou_allfg"] + LEARNS_MARGIN and row["fg_n"] < COLLAPSED_FG
    return row


def records_iou(folder: Path, config: RunConfig) -> float:
    with gzip.open(folder / "episodes.csv.gz", "rt") as f:
        records = pd.read_csv(f)
    held = records[(records["line"] == config.holdout) & (records["step"] == config.inner_steps)]
    if "protocol" in held:
        held = held[held["protocol"] == "seed"]
    if "reference" in held:  # the references' rows (scratch has step n too) are not the run's
        held = held[~held["reference"]]
    return float(held["iou"].mean())


def table(out: str) -> pd.DataFrame:
    rows = [
        measure(summary.parent)
        for summary in sorted(Path(out).glob("runs/maml-*/summary.json"))
        if (summary.parent / "checkpoint.pt").is_file()
    ]
    if not rows:
        raise SystemExit(f"no finished maml run under {out}/runs")
    return pd.DataFrame(rows).sort_values(["candidate", "holdout", "k", "seed"])


def curves(out: str) -> pd.DataFrame:
    rows = []
    for log in sorted(Path(out).glob("runs/maml-*/train_log.csv")):
        config = stored_config(log.parent)
        points = pd.read_csv(log).dropna(subset=["val_iou_0"])
        for _, point in points.iterrows():
            rows.append({"candidate": candidate_of(config), "holdout": config.holdout, "k": config.k, "seed": config.seed,
                         "step": int(point["step"]), "val_iou_0": point["val_iou_0"], "val_iou_n": point["val_iou_n"]})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["commands", "table", "curves"])
    parser.add_argument("--out", default="/tmp/collapse/screen", help="results folder of the runs")
    parser.add_argument("--stage", choices=list(STAGES), default="screen")
    args = parser.parse_args()
    if args.what == "commands":
        print("\n".join(commands(args.out, args.stage)))
    else:
        with pd.option_context("display.width", 160, "display.float_format", "{:.3f}".format):
            print((table if args.what == "table" else curves)(args.out).to_string(index=False))


if __name__ == "__main__":
    main()
