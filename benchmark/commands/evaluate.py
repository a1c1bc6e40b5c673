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
they differ from the run): ``episodes.csv.gz``, ``images.csv.gz`` (what the report reads) and ``observations.csv.gz``
(per crop; bulky, not committed) as the run's, plus the columns ``evaluated_on`` and ``split``; ``manifests.json.gz``,
``summary.json``, and with ``--whole-images``
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


def instance_collector(data, split: str, rows: list, rule: dict, algo: str):
    """``on_final`` for ``evaluation.evaluate_protocols``: each episode's instance AP over its query images, appended
    to ``rows`` (one per method): the algorithm's, under each protocol, and, once, the classical references' on
    the same images (their masks through the same instance rule), beside ``*_truth_mask``, the AP the rule draws
    from the annotated mask itself."""
    import torch

    from benchmark.evaluation import SEED_PROTOCOL
    from benchmark.instances import instance_ap, instance_scores, instances
    from benchmark.references import CLASSICAL
    from tasks.episodes import stack_episodes

    def collect(protocol, line, indices, episodes, logits):
        by_id = {info.id: info for info in data.images(line, split)}
        methods = {algo: torch.sigmoid(logits[:, :, 0]).cpu().numpy()}
        if protocol == SEED_PROTOCOL:  # the references do not depend on the protocol
            batch = stack_episodes(episodes)
            methods |= {name: (predict(batch.support_x, batch.support_y, batch.query_x)[:, :, 0] > 0).float().numpy() for name, predict in CLASSICAL.items()}
        for e, episode in enumerate(episodes):
            truth = [data.instances(by_id[image_id])[top : top + height, left : left + width] for image_id, (top, left, height, width) in episode.manifest.query]
            ceilings = [instances(mask > 0, **rule) for mask in truth]
            ceiling = {f"{name}_truth_mask": value for name, value in instance_ap([(c, instance_scores(c, None)) for c in ceilings], truth).items()}
            for method, probabilities in methods.items():
                predicted = []
                for j in range(len(truth)):
                    labels = instances(probabilities[e, j] > 0.5, **rule)
                    predicted.append((labels, instance_scores(labels, probabilities[e, j] if method == algo else None)))
                rows.append({"protocol": protocol, "line": line, "episode": indices[e], "method": method, **instance_ap(predicted, truth), **ceiling})

    return collect


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from benchmark.commands.run import progress_view
    from benchmark.trained import run_folder

    for name in ("k", "episodes"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1 (got {getattr(args, name)})")
    console = Console()
    with progress_view(console) as progress:
        out, summary = evaluate_run(
            run_folder(args.run, args.results), args.data_root, holdout=args.holdout, k=args.k,
            whole_images=args.whole_images, episodes=args.episodes, split=args.split, tag=args.tag, device=args.device,
            rule=instance_options(args), progress=progress, note=console.print,
        )
    console.print(result_table(summary))
    console.print(f"records: {out}")
    return 0


def annotated_split(root: Path, line: str) -> str | None:
    """The split ``evaluate`` would read ``line`` from in ``root`` (test, else val, else train), if it has two or more
    annotated images there (an episode needs one for support and one for queries); else None."""
    from tasks.livecell import LiveCell

    data = LiveCell(root)
    split = line_splits(data, [line], None, own_data=False).get(line)
    return split if split and len(data.images(line, split)) >= 2 else None


def evaluation_folder(folder: Path, root: Path, k: int | None = None, whole_images: bool = False) -> Path:
    """Where ``evaluate_run`` with these options stores its records (default tag)."""
    from benchmark.trained import run_config

    run = run_config(folder)
    return Path(folder) / "evaluations" / default_tag(root, k or run.k, run.k, whole_images)


def evaluate_run(
    folder: Path, root: Path, *, holdout: str | None = None, k: int | None = None, whole_images: bool = False,
    episodes: int | None = None, split: str | None = None, tag: str | None = None, device: str | None = None,
    rule: dict | None = None, progress=None, note=lambda text: None,
) -> tuple[Path, dict]:
    """Score the completed run in ``folder`` on the dataset ``root`` (module doc) and store the records; return
    their folder and the summary. ``note`` receives a line for each line left out. ``sweep --evaluate-on`` calls
    this in the worker after each run."""
    import pandas as pd
    import torch

    from algorithms.state import move_state
    from benchmark.evaluation import TUNED_PROTOCOL, evaluate_protocols
    from benchmark.instances import INSTANCE_DEFAULTS
    from benchmark.observations import HELD_OUT, SEEN, per_episode, per_image
    from benchmark.runner import device_of
    from benchmark.store import write_csv, write_json, write_records
    from benchmark.trained import run_config, run_selection, run_weights
    from tasks.cache import atomic_write
    from tasks.catalogue import LINES, cell_line
    from tasks.livecell import LiveCell

    run = run_config(folder)
    algo, state = run_weights(folder)
    selection = run_selection(folder)
    rule = dict(INSTANCE_DEFAULTS) if rule is None else rule
    config = dataclasses.replace(
        run,
        data_root=str(root),
        k=k or run.k,
        crop=None if whole_images else run.crop,
        eval_episodes=episodes or run.eval_episodes,
        device=device or run.device,
    )
    device = device_of(config)
    data = LiveCell(root)
    own_data = run.data_root is not None and Path(run.data_root) == Path(config.data_root)
    wanted = [cell_line(holdout).name] if holdout else [line.name for line in LINES]
    splits = line_splits(data, wanted, split, own_data)
    if holdout and not splits:
        raise UserError(f"{root}: no annotated images of {wanted[0]} in {' or '.join(('test',) if own_data else (split,) if split else SPLIT_ORDER)}")
    single = {line: s for line, s in splits.items() if len(data.images(line, s)) < 2 and not holdout}
    splits = {line: s for line, s in splits.items() if line not in single}
    if not splits:
        raise UserError(f"{root}: no line with two or more annotated images in one split (an episode needs one for support, one for queries)")
    tag = tag or default_tag(root, config.k, run.k, whole_images)
    for line, s in single.items():
        note(f"[dim]{line}: left out, one {s} image (an episode needs two: support and queries apart)[/]")

    frames, manifests, instance_rows = [], [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        state = move_state(state, device)
        for s in dict.fromkeys(splits.values()):
            lines = [line for line in splits if splits[line] == s]
            plan = [(line, HELD_OUT if line == run.holdout else SEEN, config.eval_episodes) for line in lines]
            rows: list[dict] = []
            collect = instance_collector(data, s, rows, rule, run.algo) if whole_images else None
            try:
                observations, found, _ = evaluate_protocols(
                    config, data, algo, state, device, progress, selection, on_final=collect, plan=plan, split=s
                )
            except FloatingPointError as err:
                raise UserError(f"test-time adaptation diverged: {err}") from None
            frames.append(observations.assign(evaluated_on=tag, split=s))
            manifests += found
            if collect and selection and not any(row["protocol"] == TUNED_PROTOCOL for row in rows):
                rows += [{**row, "protocol": TUNED_PROTOCOL} for row in rows if row["method"] == run.algo]  # tuned = seed there
            instance_rows += [{**row, "split": s} for row in rows]
    finally:
        torch.set_num_threads(threads)

    observations = pd.concat(frames, ignore_index=True).assign(run_id=Path(folder).name)  # the run scored, not this setting's id
    out = Path(folder) / "evaluations" / tag
    write_csv(out / "observations.csv.gz", observations)
    write_records(out / "episodes.csv.gz", per_episode(observations))
    write_records(out / "images.csv.gz", per_image(observations))
    atomic_write(out / "manifests.json.gz", lambda f: f.write(gzip.compress(json.dumps(manifests).encode(), mtime=0)))
    instances_frame = pd.DataFrame(instance_rows, columns=["protocol", "line", "split", "episode", "method", "ap50", "ap", "ap50_truth_mask", "ap_truth_mask"])
    if whole_images:
        write_csv(out / "instances.csv", instances_frame)
    summary = {
        "run_id": Path(folder).name, "algo": run.algo, "holdout": run.holdout, "run_k": run.k, "evaluated_on": tag,
        "data_root": config.data_root, "k": config.k, "crop": config.crop, "eval_queries": config.eval_queries,
        "inner_steps": config.inner_steps, "adaptation_rate": selection.rate if selection else None,
        "instances": rule if whole_images else None, "left_out": sorted(single),
        "lines": summary_lines(observations, splits, data, run.holdout, run.algo, instances_frame if whole_images else None),
    }
    write_json(out / "summary.json", summary)
    return out, summary


def summary_lines(observations, splits: dict[str, str], data, holdout: str, algo: str, instances=None) -> list[dict]:
    """Per line and protocol: the algorithm's IoU before and after adaptation, with a 95% interval whose units are
    the query images (:func:`benchmark.stats.mean_ci`), and the same for each reference on the same episodes; AP
    (intervals over episodes) of the algorithm and of the classical references where whole images were scored."""
    from benchmark.observations import HELD_OUT, SEEN, per_image
    from benchmark.stats import mean_ci
    from benchmark.store import image_scores

    def bounded(interval) -> list[float]:  # IoU and AP lie in [0, 1]; few images give wide t-intervals
        return [max(0.0, interval.low), min(1.0, interval.high)]

    def scores(rows) -> dict:
        images = per_image(rows)
        interval, step0 = image_scores(images)
        return {"iou": interval.mean, "iou_ci": bounded(interval), "query_images": int(images.image_id.nunique()), "iou_step0": step0}

    def aps(rows) -> dict:
        out = {}
        for name in ("ap50", "ap"):
            interval = mean_ci(rows[name].dropna())
            out |= {name: interval.mean, f"{name}_ci": bounded(interval)}
        return out

    out = []
    for protocol in observations.protocol.unique():
        for line, split in splits.items():
            rows = observations[(observations.line == line) & (observations.protocol == protocol)]
            own, references = rows[~rows.reference], rows[rows.reference]
            row = {
                "line": line, "protocol": protocol, "role": HELD_OUT if line == holdout else SEEN, "split": split,
                "images": len(data.images(line, split)), "episodes": int(own.episode.nunique()), **scores(own),
                "references": {name: scores(group) for name, group in references.groupby("method", sort=False)},
            }
            if instances is not None:
                here = instances[instances.line == line]
                ours = here[(here.method == algo) & (here.protocol == protocol)]
                row |= aps(ours) | {f"{name}_truth_mask": float(ours[f"{name}_truth_mask"].mean()) for name in ("ap50", "ap")}
                for name, group in here[here.method != algo].groupby("method", sort=False):
                    row["references"][name] |= aps(group)
            out.append(row)
    return out


def result_table(summary: dict):
    """The algorithm's rows and, under them, the references' (scored once, on the same episodes)."""
    from rich.table import Table

    whole = summary["crop"] is None
    shape = "whole images" if whole else f"{summary['crop']}-px crops"
    table = Table(
        title=f"{summary['algo']} (held out {summary['holdout']}) on {summary['evaluated_on']}, k={summary['k']}, {shape}",
        caption="[95% CI]: IoU over query images, AP over episodes; references (ref.) on the same episodes",
    )
    names = ["line (split, images)", "role", "method", "protocol", "episodes", "IoU step 0", f"IoU step {summary['inner_steps']}"]
    names += ["AP@0.5", "AP@[.5:.95]", "AP@0.5, true mask"] if whole else []
    for name in names:
        table.add_column(name, justify="left" if name in names[:4] else "right")
    interval = lambda row, name: f"{row[name]:.3f} [{row[name + '_ci'][0]:.3f}, {row[name + '_ci'][1]:.3f}]"  # noqa: E731
    for row in summary["lines"]:
        where = f"{row['line']} ({row['split']}, {row['images']})"
        cells = [where, row["role"], summary["algo"], row["protocol"], str(row["episodes"]), f"{row['iou_step0']:.3f}", interval(row, "iou")]
        table.add_row(*cells, *([interval(row, "ap50"), interval(row, "ap"), f"{row['ap50_truth_mask']:.3f}"] if whole else []))
    for row in summary["lines"]:
        if row["protocol"] != summary["lines"][0]["protocol"]:
            continue  # the references do not depend on the protocol
        for name, ref in row["references"].items():
            where = f"{row['line']} ({row['split']}, {row['images']})"
            ap = [interval(ref, "ap50"), interval(ref, "ap"), ""] if "ap50" in ref else [""] * 3
            table.add_row(where, row["role"], f"{name} (ref.)", "", str(row["episodes"]), f"{ref['iou_step0']:.3f}", interval(ref, "iou"), *(ap if whole else []))
    return table
