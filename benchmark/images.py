"""A user's own images and masks: read in any common form, converted the way the training data are.

The benchmark's images (LIVECell and its synthetic look-alike) are 8-bit greyscale, fed to the model as
value / 255 with no per-image normalisation. A user's image becomes the same: 8-bit greyscale is divided by 255;
16-bit greyscale by 65535 (its full range, so a 12-bit camera image stored in 16 bits comes out dark: rescale
it to the full range first); colour (RGB, RGBA, palette) is converted to greyscale by Pillow's luma rule
(L = 0.299 R + 0.587 G + 0.114 B) and divided by 255. Formats: anything Pillow reads (TIFF, PNG, JPEG, ...).

A mask is a greyscale image of the same size whose non-zero pixels are cell (a binary mask or a label image),
or the polygons of a COCO file (rasterised with pycocotools, as the reader rasterises LIVECell's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from benchmark.errors import UserError
from tasks.coco import load_coco
from tasks.errors import DataError
from tasks.mask_cache import instance_map

SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
OUTLINE = (255, 210, 0)  # overlay outline colour: amber, visible on grey phase-contrast images


def _open(path: Path, what: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{path}: unreadable {what} ({err})") from None


def read_image(path: Path | str) -> np.ndarray:
    """float32 [H, W] in [0, 1], converted as the module doc says."""
    path = Path(path)
    im = _open(path, "image")
    if im.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr", "1"):
        im = im.convert("L")
    pixels = np.asarray(im)
    if pixels.ndim != 2:
        raise UserError(f"{path}: expected a greyscale or colour image, found {pixels.ndim} dimensions (mode {im.mode})")
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    if pixels.dtype.kind in "iu" and pixels.min() >= 0 and pixels.max() <= 65535:
        return pixels.astype(np.float32) / 65535.0
    raise UserError(f"{path}: unsupported pixel format (mode {im.mode}, {pixels.dtype}); use 8- or 16-bit greyscale or RGB")


def read_mask(path: Path | str, shape: tuple[int, int], image: Path | str) -> np.ndarray:
    """bool [H, W]: the non-zero pixels of a mask image that must match ``image``'s ``shape`` and mark some cell."""
    path = Path(path)
    pixels = np.asarray(_open(path, "mask"))
    if pixels.ndim == 3:
        pixels = pixels.max(axis=2)
    if pixels.shape != tuple(shape):
        raise UserError(
            f"{path}: mask is {pixels.shape[1]}x{pixels.shape[0]} but its image {image} is {shape[1]}x{shape[0]}"
        )
    mask = pixels != 0
    if not mask.any():
        raise UserError(f"{path}: the mask is empty (no non-zero pixel): annotate at least one cell")
    return mask


def parse_pair(text: str) -> tuple[Path, Path]:
    """``IMG:MASK`` -> (image path, mask path); the last colon separates them (Windows drive letters survive)."""
    image, sep, mask = text.rpartition(":")
    if not sep or not image or not mask:
        raise UserError(f"--support {text!r}: expected IMAGE:MASK (an image and its mask, separated by a colon)")
    return Path(image), Path(mask)


def support_from_pairs(pairs: list[str]) -> list[tuple[Path, np.ndarray, np.ndarray]]:
    """(path, image, mask) of each ``IMG:MASK``."""
    out = []
    for text in pairs:
        image_path, mask_path = parse_pair(text)
        image = read_image(image_path)
        out.append((image_path, image, read_mask(mask_path, image.shape, image_path)))
    return out


def support_from_coco(path: Path | str, folder: Path | None = None) -> list[tuple[Path, np.ndarray, np.ndarray]]:
    """(path, image, mask) of every image a COCO file lists; file names are relative to ``folder`` (default: the
    file's own folder)."""
    path = Path(path)
    folder = path.parent if folder is None else Path(folder)
    index = load_coco(path)  # DataError (one line, naming the file) when it is not a readable COCO file
    if not len(index.image_ids):
        raise DataError(f"{path}: lists no images")
    out = []
    for row, name in enumerate(index.file_names):
        image_path = folder / str(name)
        image = read_image(image_path)
        height, width = int(index.heights[row]), int(index.widths[row])
        if image.shape != (height, width):
            raise UserError(f"{image_path}: image is {image.shape[1]}x{image.shape[0]} but {path} says {width}x{height}")
        mask = instance_map(index.annotations(row), height, width)[0] > 0
        if not mask.any():
            raise UserError(f"{image_path}: {path} annotates no cell in it (an empty mask)")
        out.append((image_path, image, mask))
    return out


def image_files(sources: list[Path]) -> list[Path]:
    """The images to segment: files as given, folders expanded to their images (sorted)."""
    files = []
    for source in sources:
        if source.is_dir():
            found = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
            if not found:
                raise UserError(f"{source}: no images ({', '.join(SUFFIXES)}) in this folder")
            files += found
        elif source.is_file():
            files.append(source)
        else:
            raise UserError(f"{source}: no such image or folder")
    for path in files:  # an unreadable file fails now, before any adaptation, not halfway through
        try:
            Image.open(path).close()
        except (UnidentifiedImageError, OSError) as err:
            raise UserError(f"{path}: unreadable image ({err})") from None
    return files


def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3]: the image in grey with every instance's outline (pixels bordering another label)."""
    grey = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    padded = np.pad(labels, 1, mode="edge")
    edge = labels > 0
    edge &= (
        (padded[:-2, 1:-1] != labels) | (padded[2:, 1:-1] != labels) | (padded[1:-1, :-2] != labels) | (padded[1:-1, 2:] != labels)
    )
    rgb[edge] = OUTLINE
    return rgb
