"""The README's picture: `predict` on a synthetic MCF7 image, adapted from two others (the real sample is CC BY-NC and
stays out of the repository, so the committed picture is of the synthetic look-alike; docs/real-images.md gives the
same command on real images).

    python experiments/readme_figure.py RUN [--results DIR] [--out docs/figures]

Writes a COCO file of two annotated synthetic MCF7 test images (the support), runs `python -m benchmark predict RUN`
on a third with its annotations as truth, and keeps the overlay (cropped to a 352x260 corner, so that the outlines
show at README size) and the scores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
from PIL import Image

from tasks.livecell import open_livecell

SUPPORT, TARGET = (0, 1), 2  # indices into the synthetic set's MCF7 test images
CORNER = (0, 0, 352, 260)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run")
    parser.add_argument("--results", default="results")
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    args = parser.parse_args()
    data = open_livecell(None)
    coco_path = data.annotation_file("MCF7", "test")
    coco = json.loads(Path(coco_path).read_text())
    images = sorted(coco["images"], key=lambda image: image["file_name"])
    support = [images[i] for i in SUPPORT]
    ids = {image["id"] for image in support}
    subset = {**coco, "images": support, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}
    folder = data.root / "images" / "livecell_test_images"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "support.json").write_text(json.dumps(subset))
        out = Path(tmp) / "predicted"
        command = [
            sys.executable, "-m", "benchmark", "predict", args.run, "--results", args.results,
            "--support-coco", str(Path(tmp) / "support.json"), "--support-images", str(folder),
            "--images", str(folder / images[TARGET]["file_name"]), "--truth-coco", str(coco_path), "--out", str(out),
        ]
        subprocess.run(command, check=True)
        name = Path(images[TARGET]["file_name"]).stem
        args.out.mkdir(parents=True, exist_ok=True)
        Image.open(out / f"{name}.overlay.png").crop(CORNER).save(args.out / "predict-synthetic-mcf7.png", optimize=True)
        scores = pd.read_csv(out / "scores.csv")
        scores["file"] = [Path(f).name for f in scores["file"]]
        scores.to_csv(args.out / "predict-synthetic-mcf7.scores.csv", index=False)
    print(f"wrote {args.out / 'predict-synthetic-mcf7.png'} and its scores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
