"""``python -m benchmark evaluate``: a finished run's meta-trained weights, scored on another dataset.

The protocol is the run's own, through the runner's own evaluation (``evaluation.evaluate_protocols``): the
algorithm's test-time adaptation under the seed protocol and, where the run selected a rate on validation data, at
that rate (rows marked by ``protocol``), its episode rule (seeded as the run's evaluation, so two evaluations agree number for
number), its crops and query count; ``--k`` and ``--whole-images`` change only what they say. Every line of
ROOT with annotated images is scored (``--holdout`` picks one), ``--episodes`` each (default: the run's
held-out count); the run's held-out line keeps the role "held-out", the others are "seen" (seen in
meta-training, though on the run's own data). A line is read from its test split, else val, else train
(``--split`` fixes one); on the run's own data only the test split counts. Lines with fewer images than
k + queries follow the small-set rule (``tasks.episodes.sample_small_episode``); a line with one image is left
out with a note (an error when asked for by ``--holdout``).

Records go to ``<run>/evaluations/<tag>/`` (tag: the dataset folder's name, plus ``-k<K>`` and ``-whole`` where
they differ from the run): ``episodes.csv.gz`` and ``observations.csv.gz`` as the run's (plus the columns
``evaluated_on`` and ``split``), ``manifests.json.gz``, ``summary.json``, and with ``--whole-images``
``instances.csv``: COCO AP@0.5 and AP@[.5:.95] of each episode's query images (``benchmark.instances``), beside
the reference ``*_truth_mask``: the AP of instances the same rule draws from the annotated mask itself, the most
the instance step can give a perfect binary mask.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import re
from pathlib import Path

from benchmark.commands.predict import add_instance_options, instance_options
from benchmark.errors import UserError

SPLIT_ORDER = ("test", "val", "train")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="score a finished run's weights on another dataset (e.g. real LIVECell), with the run's protocol",
        description="Adapt RUN's meta-trained weights on the episodes of every annotated line of ROOT, exactly as the "
        "run evaluated itself, and store the records under <run>/evaluations/<tag>/.",
    )
    parser.add_argument("run", metavar="RUN", help="a run folder, or a run id (or a unique prefix of one) under --results")
    parser.add_argument("--data-root", type=Path, required=True, metavar="ROOT", help="a dataset in LIVECell's layout")
    parser.add_argument("--holdout", metavar="LINE", help="score this line only (default: every line ROOT annotates)")
    parser.add_argument("--k", type=int, help="support images per episode (default: the run's)")
    parser.add_argument("--whole-images", action="store_true", help="episodes of whole images instead of the run's crops; adds instance AP")
    parser.add_argument("--episodes", type=int, help="episodes per line (default: the run's held-out count)")
    parser.add_argument("--split", choices=SPLIT_ORDER, help="read every line from this split (default: test, else val, else train)")
    parser.add_argument("--tag", help="name of the records' folder (default: from ROOT's name and the options)")
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder holding RUN (default: results)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: the run's)")
    add_instance_options(parser)
    parser.set_defaults(func=main)


def default_tag(root: Path, k: int, run_k: int, whole: bool) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(root).resolve().name).strip("-") or "data"
    return name + (f"-k{k}" if k != run_k else "") + ("-whole" if whole else "")


def line_splits(data, lines, forced: str | None, own_data: bool) -> dict[str, str]:
    """line -> the split it is read from (module doc), for the lines that have annotated images there."""
    splits = ("test",) if own_data else (forced,) if forced else SPLIT_ORDER
    out = {}
    for line in lines:
        for split in splits:
            if line in {l.name for l in data.lines(split)}:
                out[line] = split
                break
    return out


def instance_collector(data, split: str, rows: list, rule: dict):
    """``on_final`` for ``evaluation.evaluate_protocols``: each episode's instance AP over its query images, appended to ``rows``."""
    import torch

    from benchmark.instances import instance_ap, instance_scores, instances

    def collect(protocol, line, indices, episodes, logits):
        by_id = {info.id: info for info in data.images(line, split)}
        probabilities = torch.sigmoid(logits[:, :, 0]).cpu().numpy()
        for e, episode in enumerate(episodes):
            predicted, from_truth, truth = [], [], []
            for j, (image_id, (top, left, height, width)) in enumerate(episode.manifest.query):
                labels = instances(probabilities[e, j] > 0.5, **rule)
                predicted.append((labels, instance_scores(labels, probabilities[e, j])))
                truth.append(data.instances(by_id[image_id])[top : top + height, left : left + width])
                ceiling = instances(truth[-1] > 0, **rule)
                from_truth.append((ceiling, instance_scores(ceiling, None)))
            reference = {f"{name}_truth_mask": value for name, value in instance_ap(from_truth, truth).items()}
            rows.append({"protocol": protocol, "line": line, "episode": indices[e], **instance_ap(predicted, truth), **reference})

    return collect


def main(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch
    from rich.console import Console

    from benchmark.commands.run import progress_view
    from benchmark.observations import per_episode
    from algorithms.state import move_state
    from benchmark.evaluation import TUNED_PROTOCOL, evaluate_protocols
    from benchmark.observations import HELD_OUT, SEEN
    from benchmark.runner import device_of
    from benchmark.stats import mean_ci
    from benchmark.store import write_csv, write_json
    from benchmark.trained import run_config, run_folder, run_selection, run_weights
    from tasks.cache import atomic_write
    from tasks.catalogue import LINES, cell_line
    from tasks.livecell import LiveCell

    folder = run_folder(args.run, args.results)
    run = run_config(folder)
    algo, state = run_weights(folder)
    selection = run_selection(folder)
    for name in ("k", "episodes"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1 (got {getattr(args, name)})")
    config = dataclasses.replace(
        run,
        data_root=str(args.data_root),
        k=args.k or run.k,
        crop=None if args.whole_images else run.crop,
        eval_episodes=args.episodes or run.eval_episodes,
        device=args.device or run.device,
    )
    device = device_of(config)
    data = LiveCell(args.data_root)
    own_data = run.data_root is not None and Path(run.data_root) == Path(config.data_root)
    wanted = [cell_line(args.holdout).name] if args.holdout else [line.name for line in LINES]
    splits = line_splits(data, wanted, args.split, own_data)
    if args.holdout and not splits:
        raise UserError(f"{args.data_root}: no annotated images of {wanted[0]} in {' or '.join(('test',) if own_data else (args.split,) if args.split else SPLIT_ORDER)}")
    single = {line: split for line, split in splits.items() if len(data.images(line, split)) < 2 and not args.holdout}
    splits = {line: split for line, split in splits.items() if line not in single}
    if not splits:
        raise UserError(f"{args.data_root}: no line with two or more annotated images in one split (an episode needs one for support, one for queries)")
    tag = args.tag or default_tag(args.data_root, config.k, run.k, args.whole_images)
    rule = instance_options(args)

    console = Console()
    for line, split in single.items():
        console.print(f"[dim]{line}: left out, one {split} image (an episode needs two: support and queries apart)[/]")
    frames, manifests, instance_rows = [], [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with progress_view(console) as progress:
            state = move_state(state, device)
            for split in dict.fromkeys(splits.values()):
                lines = [line for line in splits if splits[line] == split]
                plan = [(line, HELD_OUT if line == run.holdout else SEEN, config.eval_episodes) for line in lines]
                rows: list[dict] = []
                collect = instance_collector(data, split, rows, rule) if args.whole_images else None
                try:
                    observations, found, _ = evaluate_protocols(
                        config, data, algo, state, device, progress, selection, on_final=collect, plan=plan, split=split
                    )
                except FloatingPointError as err:
                    raise UserError(f"test-time adaptation diverged: {err}") from None
                frames.append(observations.assign(evaluated_on=tag, split=split))
                manifests += found
                if collect and selection and not any(row["protocol"] == TUNED_PROTOCOL for row in rows):
                    rows += [{**row, "protocol": TUNED_PROTOCOL} for row in rows]  # tuned rows are the seed rows there
                instance_rows += [{**row, "split": split} for row in rows]
    finally:
        torch.set_num_threads(threads)

    observations = pd.concat(frames, ignore_index=True)
    episodes = per_episode(observations)
    out = folder / "evaluations" / tag
    write_csv(out / "observations.csv.gz", observations)
    write_csv(out / "episodes.csv.gz", episodes)
    atomic_write(out / "manifests.json.gz", lambda f: f.write(gzip.compress(json.dumps(manifests).encode(), mtime=0)))
    instances_frame = pd.DataFrame(instance_rows, columns=["protocol", "line", "split", "episode", "ap50", "ap", "ap50_truth_mask", "ap_truth_mask"])
    if args.whole_images:
        write_csv(out / "instances.csv", instances_frame)

    final = episodes[episodes.step == episodes.step.max()]
    summary_lines = []
    for protocol in final.protocol.unique():
        for line in splits:
            ours = (final.line == line) & (final.protocol == protocol)
            iou = mean_ci(final[ours].iou)
            row = {
                "line": line, "protocol": protocol, "role": HELD_OUT if line == run.holdout else SEEN, "split": splits[line],
                "images": len(data.images(line, splits[line])), "episodes": int(final[ours].episode.nunique()),
                "iou": iou.mean, "iou_ci": [iou.low, iou.high],
                "iou_step0": float(episodes[(episodes.step == 0) & (episodes.line == line) & (episodes.protocol == protocol)].iou.mean()),
            }
            if args.whole_images:
                aps = instances_frame[(instances_frame.line == line) & (instances_frame.protocol == protocol)]
                for name in ("ap50", "ap"):
                    interval = mean_ci(aps[name].dropna())
                    row |= {name: interval.mean, f"{name}_ci": [interval.low, interval.high], f"{name}_truth_mask": float(aps[f"{name}_truth_mask"].mean())}
            summary_lines.append(row)
    write_json(out / "summary.json", {
        "run_id": folder.name, "algo": run.algo, "holdout": run.holdout, "run_k": run.k, "evaluated_on": tag,
        "data_root": config.data_root, "k": config.k, "crop": config.crop, "eval_queries": config.eval_queries,
        "adaptation_rate": selection.rate if selection else None,
        "instances": rule if args.whole_images else None, "left_out": sorted(single), "lines": summary_lines,
    })
    console.print(result_table(run, tag, config, summary_lines, args.whole_images))
    console.print(f"records: {out}")
    return 0


def result_table(run, tag, config, rows, whole):
    from rich.table import Table

    shape = "whole images" if whole else f"{config.crop}-px crops"
    table = Table(title=f"{run.algo} (held out {run.holdout}) on {tag}, k={config.k}, {shape}", caption="[95% CI] over episodes")
    names = ["line (split, images)", "role", "protocol", "episodes", "IoU step 0", f"IoU step {config.inner_steps}"]
    names += ["AP@0.5", "AP@[.5:.95]", "AP@0.5, true mask"] if whole else []
    for name in names:
        table.add_column(name, justify="left" if name in names[:3] else "right")
    interval = lambda row, name: f"{row[name]:.3f} [{row[name + '_ci'][0]:.3f}, {row[name + '_ci'][1]:.3f}]"  # noqa: E731
    for row in rows:
        cells = [f"{row['line']} ({row['split']}, {row['images']})", row["role"], row["protocol"], str(row["episodes"]), f"{row['iou_step0']:.3f}", interval(row, "iou")]
        if whole:
            cells += [interval(row, "ap50"), interval(row, "ap"), f"{row['ap50_truth_mask']:.3f}"]
        table.add_row(*cells)
    return table
