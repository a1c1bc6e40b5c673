"""``python -m benchmark predict``: adapt a finished run's meta-trained weights to a user's k annotated images,
then segment any number of images.

What it adapts on: exactly the run's test-time adaptation (its loss and steps, at the rate the run selected on
validation data where it selected one, else its own; ``--steps``/``--lr`` override them), on crops of the run's crop size (64 px at the default preset) drawn from the support images by the
episodes' rule (uniform positions, redrawn while a crop is under 5% cell; ``tasks.episodes``), ``--tiles`` per
image (default 1: k crops, the run's own protocol), seeded by ``--seed`` (default: the run's). A run that
trained on whole images (crop none) adapts on whole support images, which must then share one size. Adapting on
crops keeps memory and time at what the run used, whatever the size of the user's images.

What it writes, per image: ``<name>.mask.png`` (0 background, 255 cell), ``<name>.overlay.png`` (the image with
every instance's outline), and for all images ``instances.json``: COCO with one RLE annotation per instance
(``benchmark.instances``: the instance rule and its parameters), each scored by its mean cell probability. With
``--truth-coco``, images it annotates (matched by file name) are scored into ``scores.csv``: IoU, COCO AP@0.5 and
AP@[.5:.95], and the AP the same instance rule reaches from the true mask (the instance step's ceiling).
Images of any size are segmented whole (the model pads to its multiple and crops back).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import zlib
from pathlib import Path

import numpy as np

from benchmark.errors import UserError
from benchmark.instances import CATEGORY, INSTANCE_DEFAULTS

MASK_SUFFIX, OVERLAY_SUFFIX, COCO_FILE, SCORES_FILE = ".mask.png", ".overlay.png", "instances.json", "scores.csv"


def add_instance_options(parser: argparse.ArgumentParser) -> None:
    """The instance rule's parameters (``benchmark.instances``), shared with ``evaluate``."""
    group = parser.add_argument_group("instances (cells from the predicted mask; see docs/real-images.md)")
    group.add_argument("--no-split", dest="split_cells", action="store_false", help="connected components only, no watershed split")
    group.add_argument("--min-distance", type=int, default=INSTANCE_DEFAULTS["min_distance"], metavar="PX",
                       help="cell centres closer than this are one cell (default: %(default)s)")
    group.add_argument("--sigma", type=float, default=INSTANCE_DEFAULTS["sigma"], metavar="PX",
                       help="smoothing of the distance map before finding centres (default: %(default)s)")
    group.add_argument("--min-radius", type=float, default=INSTANCE_DEFAULTS["min_radius"], metavar="PX",
                       help="a centre lies at least this far inside the cell (default: %(default)s)")
    group.add_argument("--min-size", type=int, default=INSTANCE_DEFAULTS["min_size"], metavar="PIXELS",
                       help="smaller instances are dropped (default: %(default)s)")


def instance_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``benchmark.instances.instances`` the options ask for."""
    return {name: getattr(args, "split_cells" if name == "split" else name) for name in INSTANCE_DEFAULTS}


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "predict",
        help="adapt a finished run to your k annotated images and segment your images",
        description="Adapt RUN's meta-trained weights to k annotated images (--support IMG:MASK ... or --support-coco "
        "FILE.json) with the run's adaptation, then segment every image of --images; writes a mask and an overlay "
        "per image and all instances as one COCO file into --out.",
    )
    parser.add_argument("run", metavar="RUN", help="a run folder, or a run id (or a unique prefix of one) under --results")
    support = parser.add_mutually_exclusive_group(required=True)
    support.add_argument("--support", nargs="+", metavar="IMG:MASK", help="annotated images: each image and its mask (non-zero = cell)")
    support.add_argument("--support-coco", type=Path, metavar="FILE.json", help="annotated images as COCO polygons (file names relative to the file)")
    parser.add_argument("--support-images", type=Path, metavar="DIR", help="where the images of --support-coco are (default: the file's folder)")
    parser.add_argument("--images", type=Path, nargs="+", required=True, metavar="DIR_OR_FILE", help="images to segment (folders: every TIFF/PNG/JPEG in them)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--truth-coco", type=Path, metavar="FILE.json",
                        help="annotations of (some of) the images, matched by file name: scores them (IoU, instance AP) into scores.csv")
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder holding RUN (default: results)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: cpu)")
    parser.add_argument("--steps", type=int, help="adaptation steps (default: the run's)")
    parser.add_argument("--lr", type=float, help="adaptation rate (default: the run's)")
    parser.add_argument("--tiles", type=int, default=1, help="crops of the run's crop size drawn from each support image (default: 1)")
    parser.add_argument("--seed", type=int, help="seed of the support crops (default: the run's)")
    add_instance_options(parser)
    parser.set_defaults(func=main)


def support_tiles(support: list[tuple[Path, np.ndarray, np.ndarray]], crop: int | None, tiles: int, seed: int):
    """float32 tensors [1, n, 1, h, w] of support images and masks: ``tiles`` crops of each (module doc)."""
    import torch

    from tasks.episodes import _draw_box

    rng = np.random.default_rng([seed, zlib.crc32(b"predict-support")])
    images, masks = [], []
    for path, image, mask in support:
        if crop is None:
            boxes = [(0, 0, *image.shape)]
        elif crop > min(image.shape):
            raise UserError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, smaller than the run's {crop}-pixel crops")
        else:
            boxes = [_draw_box(rng, mask, crop) for _ in range(tiles)]
        for top, left, height, width in boxes:
            images.append(image[top : top + height, left : left + width])
            masks.append(mask[top : top + height, left : left + width])
    if len({a.shape for a in images}) > 1:
        raise UserError("the run adapts on whole images (crop none), so its support images must share one size; "
                        f"these differ: {', '.join(f'{p.name} {im.shape[1]}x{im.shape[0]}' for p, im, _ in support)}")
    to = lambda arrays: torch.from_numpy(np.stack(arrays).astype(np.float32))[None, :, None]  # noqa: E731
    return to(images), to(masks)


def adapted_weights(algo, state, support_x, support_y, adaptation):
    """The weights after the whole ``adaptation`` on one episode's support set."""
    for _, params in algo.adapt(state, support_x, support_y, adaptation):
        pass
    return params


def probability(algo, params, image: np.ndarray, device) -> np.ndarray:
    """float32 [H, W] cell probability of one whole image."""
    import torch

    x = torch.from_numpy(image).to(device)[None, None, None]
    return torch.sigmoid(algo.predict(params, x))[0, 0, 0].cpu().numpy()


def with_adaptation(algo, steps: int | None, lr: float | None, selected: float | None = None):
    """The run's test-time adaptation: the algorithm's own, at the rate the run selected on validation data where it
    selected one, with other steps or rate where asked."""
    if steps is not None and steps < 0 or lr is not None and not lr > 0:
        raise UserError(f"--steps must be >= 0 and --lr > 0 (got {steps}, {lr})")
    adaptation = algo.adaptation
    if steps is not None:
        rate = adaptation.rate
        if isinstance(rate, tuple):  # a rate per step cannot be stretched to another step count
            raise UserError(f"{algo.name} adapts with one rate per step ({len(rate)} steps); --steps cannot change that")
        adaptation = dataclasses.replace(adaptation, steps=steps)
    rate = lr if lr is not None else selected
    return adaptation if rate is None else adaptation.with_rate(rate)


def truth_labels(path: Path) -> dict:
    """file name -> a function giving the annotated instance labels of that image (rasterised as the reader does)."""
    from tasks.coco import load_coco
    from tasks.mask_cache import instance_map

    index = load_coco(path)
    return {
        Path(str(name)).name: (lambda row=row: instance_map(index.annotations(row), int(index.heights[row]), int(index.widths[row]))[0])
        for row, name in enumerate(index.file_names)
    }


def score_image(path: Path, labels, scores, mask, truth, rule: dict) -> dict:
    """IoU of the mask and instance AP of one image against its annotation, beside the AP of the true mask."""
    from benchmark.instances import instance_ap, instance_scores, instances

    true = truth()
    if true.shape != mask.shape:
        raise UserError(f"{path}: image is {mask.shape[1]}x{mask.shape[0]} but its annotation is {true.shape[1]}x{true.shape[0]}")
    union = np.count_nonzero(mask | (true > 0))
    ceiling = instances(true > 0, **rule)
    return {
        "file": str(path), "cells": int(true.max()), "predicted": int(labels.max()),
        "iou": np.count_nonzero(mask & (true > 0)) / union if union else 1.0,
        **instance_ap([(labels, scores)], [true]),
        "ap50_truth_mask": instance_ap([(ceiling, instance_scores(ceiling, None))], [true])["ap50"],
    }


def write_scores(path: Path, rows: list[dict], console) -> None:
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False, float_format="%.6g")
    for row in rows:
        console.print(f"{Path(row['file']).name}: IoU {row['iou']:.3f}, AP@0.5 {row['ap50']:.3f}, AP@[.5:.95] {row['ap']:.3f} "
                      f"({row['predicted']} cells found, {row['cells']} annotated; AP@0.5 of the true mask {row['ap50_truth_mask']:.3f})", highlight=False)


def main(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image
    from rich.console import Console

    from benchmark.commands.run import progress_view
    from benchmark.images import image_files, overlay, read_image, support_from_coco, support_from_pairs
    from benchmark.instances import annotations, instance_scores, instances
    from algorithms.state import move_state
    from benchmark.trained import run_config, run_folder, run_selection, run_weights

    if args.tiles < 1:
        raise UserError(f"--tiles must be >= 1 (got {args.tiles})")
    folder = run_folder(args.run, args.results)
    config = run_config(folder)
    algo, state = run_weights(folder)
    selection = run_selection(folder)
    adaptation = with_adaptation(algo, args.steps, args.lr, selection.rate if selection else None)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UserError(f"invalid device {args.device!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {args.device!r} asked for, but no CUDA GPU is available here")
    if args.support_images is not None and args.support_coco is None:
        raise UserError("--support-images goes with --support-coco (with --support, give each image's path)")
    files = image_files(args.images)
    stems = [p.stem for p in files]
    clash = next((p for p in files if stems.count(p.stem) > 1), None)
    if clash:
        raise UserError(f"{clash}: two images named {clash.stem} would write the same outputs; segment them into separate --out folders")
    support = support_from_coco(args.support_coco, args.support_images) if args.support_coco else support_from_pairs(args.support)
    support_x, support_y = support_tiles(support, config.crop, args.tiles, config.seed if args.seed is None else args.seed)

    truth = truth_labels(args.truth_coco) if args.truth_coco else {}
    scored: list[dict] = []
    console = Console(stderr=True)
    args.out.mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [CATEGORY]}
    rule = instance_options(args)
    with progress_view(console) as progress:
        rate = f", rate {adaptation.rate:g}" if isinstance(adaptation.rate, float) else ""
        task = progress.add_task(f"adapt ({adaptation.steps} steps{rate}, k={len(support)})", total=None)
        try:
            params = adapted_weights(algo, move_state(state, device), support_x.to(device), support_y.to(device), adaptation)
        except FloatingPointError as err:
            raise UserError(f"adaptation diverged ({err}); try a smaller --lr") from None
        progress.update(task, total=1, completed=1)
        task = progress.add_task("segment", total=len(files))
        for n, path in enumerate(files, start=1):
            image = read_image(path)
            prob = probability(algo, params, image, device)
            labels = instances(prob > 0.5, **rule)
            mask_png = (prob > 0.5).astype(np.uint8) * 255
            for suffix, picture in ((MASK_SUFFIX, mask_png), (OVERLAY_SUFFIX, overlay(image, labels))):
                Image.fromarray(picture).save(args.out / (path.stem + suffix))
            if path.name in truth:
                scored.append(score_image(path, labels, instance_scores(labels, prob), prob > 0.5, truth[path.name], rule))
            coco["images"].append({"id": n, "file_name": str(path), "height": image.shape[0], "width": image.shape[1]})
            coco["annotations"] += annotations(labels, n, first_id=len(coco["annotations"]) + 1, scores=instance_scores(labels, prob))
            progress.update(task, advance=1, description=f"segment {path.name[:20]}")
    (args.out / COCO_FILE).write_text(json.dumps(coco))
    if args.truth_coco:
        if not scored:
            raise UserError(f"{args.truth_coco}: annotates none of the segmented images (matched by file name); masks and overlays were written")
        write_scores(args.out / SCORES_FILE, scored, console)
    console.print(f"{len(files)} image(s), {len(coco['annotations'])} cells: masks, overlays and {COCO_FILE} in {args.out}", highlight=False)
    return 0
