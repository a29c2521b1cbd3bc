"""One image file to an upright RGB uint8 square, or a short reason why it cannot be decoded.

Microsoft's archive holds zero-byte files, truncated JPEGs, other formats under .jpg names, CMYK, grayscale
and palette images; every one either decodes to RGB here or is named for the skip report.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

VERSION = 2  # part of the cache key: bump when decoding or the cache record changes (2: content hashes)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: 16-bit and float scaled to 8 bits, transparency composited on white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        image = Image.fromarray((values.clip(0, top) * (255.0 / top)).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def square(source, size: int) -> tuple[np.ndarray, int]:
    """((size, size, 3) uint8: upright (EXIF), RGB, shorter side resized to `size`, centre-cropped square; the
    photo's shorter side in px before resizing), from a path or a binary file."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as image:
            side = min(image.size)
            image.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that is enough
            image = to_rgb(ImageOps.exif_transpose(image))
            return np.asarray(ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)), side


def decode_image(source, size: int) -> np.ndarray:
    """The (size, size, 3) uint8 square of `square`."""
    return square(source, size)[0]


def content_hash(data: bytes) -> int:
    """A file's identity by content, whatever its name: the first 8 bytes of its BLAKE2b hash as a signed 64-bit
    integer (a chance collision among a million photos is about 1 in 4 x 10^7)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def decode_file(path: Path, size: int) -> tuple[np.ndarray, int, int]:
    """(the square, the shorter side, the content hash) of the photo at `path`, from one read of the file."""
    data = path.read_bytes()
    array, side = square(io.BytesIO(data), size)
    return array, side, content_hash(data)


def failure_kind(path: Path, error: Exception) -> str:
    """A short name for why a file could not be decoded, for the skip report. It must not raise: a file deleted
    or made unreadable since the listing is named like any other bad file, not allowed to stop the build."""
    if isinstance(error, FileNotFoundError):
        return "vanished"
    try:
        if path.is_dir():  # a folder that could not be listed (dataset.tree_entries)
            return "unreadable folder"
        if isinstance(error, PermissionError):
            return "permission denied"
        if path.stat().st_size == 0:
            return "empty file"
    except FileNotFoundError:  # deleted between the failed decode and now
        return "vanished"
    except OSError as stat_error:
        return f"unreadable ({type(stat_error).__name__})"
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return "too many pixels (decompression bomb)"
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image"
    if "truncated" in str(error).lower():
        return "truncated image"
    return f"unreadable ({type(error).__name__})"
