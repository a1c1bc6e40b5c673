"""LIVECell's on-disk format: image names, split folders, TIFF encoding and COCO records.

Checked against the real files: ``<Prefix>_Phase_<Well>_<Loc>_<DD>d<HH>h00m_<Crop>.tif``; 704x520 8-bit greyscale
TIFF, LZW with the horizontal predictor, 11 rows per strip; COCO with keys info, licenses, categories (one ``cell``,
id 1), images (id, width, height, file_name, original_filename, url) and annotations (one unclosed polygon of
0.01 px floats, area = polygon area, bbox from the vertices, iscrowd 0, category_id 1).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.catalogue import CellLine
from tasks.morphology import polygon_area

WIDTH, HEIGHT = 704, 520
SPLITS = ("train", "val", "test")
IMAGE_DIRS = {"train": "livecell_train_val_images", "val": "livecell_train_val_images", "test": "livecell_test_images"}
HOURS_PER_STEP = 4
ROWS_PER_STRIP = 11  # as in the real files (Pillow's strip size of 8 KiB for 704-px rows)
CATEGORIES = [{"supercategory": "cell", "id": 1, "name": "cell"}]
LICENSES = [{"id": 1, "name": "CC0 1.0 Universal (synthetic data)", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}]


def image_name(line: CellLine, well: str, location: int, hours: int, crop: int) -> str:
    """``BT474_Phase_C3_1_01d04h00m_4.tif`` for well C3, location 1, 28 h, crop 4."""
    return f"{line.prefix}_Phase_{well}_{location}_{hours // 24:02d}d{hours % 24:02d}h00m_{crop}.tif"


def image_path(root: Path, split: str, file_name: str) -> Path:
    return Path(root, "images", IMAGE_DIRS[split], file_name)


def wide_annotation_path(root: Path, split: str) -> Path:
    return Path(root, "annotations", "LIVECell", f"livecell_coco_{split}.json")


def line_annotation_path(root: Path, line: CellLine, split: str) -> Path:
    return Path(root, "annotations", "LIVECell_single_cells", line.folder, f"{split}.json")


def tiff_bytes(image: np.ndarray) -> bytes:
    """LIVECell's TIFF encoding of an 8-bit [H, W] image; deterministic (no time stamp is written).

    Tags 317 = 2 (horizontal predictor) and 277 = 1 (SamplesPerPixel, which Pillow leaves out) give the real
    files' tag set exactly."""
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"expected a uint8 [H, W] image, got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(
        buffer, format="TIFF", compression="tiff_lzw", tiffinfo={317: 2, 277: 1}, strip_size=ROWS_PER_STRIP * image.shape[1]
    )
    return buffer.getvalue()


def image_record(image_id: int, file_name: str, url: str) -> dict:
    return {
        "id": image_id,
        "width": WIDTH,
        "height": HEIGHT,
        "file_name": file_name,
        "original_filename": file_name[: -len(".tif")] + ".png",
        "url": url,
    }


def annotation_record(annotation_id: int, image_id: int, polygon: np.ndarray) -> dict:
    """One cell: the unclosed polygon flattened to [x0, y0, x1, y1, ...], its shoelace area and vertex bbox."""
    x, y = polygon[:, 0], polygon[:, 1]
    x0, y0 = float(x.min()), float(y.min())
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": 1,
        "segmentation": [[round(float(v), 2) for v in polygon.ravel()]],
        "area": polygon_area(polygon),
        "bbox": [x0, y0, float(x.max()) - x0, float(y.max()) - y0],
        "iscrowd": 0,
    }


def coco_document(info: dict, images: list[dict], annotations: list[dict]) -> dict:
    return {"info": info, "licenses": LICENSES, "categories": CATEGORIES, "images": images, "annotations": annotations}
