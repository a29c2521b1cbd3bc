"""One image file to an upright RGB uint8 square, or a short reason why it cannot be decoded.

Microsoft's archive holds zero-byte files, truncated JPEGs, other formats under .jpg names, CMYK, grayscale
and palette images; every one either decodes to RGB here or is named for the skip report.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

VERSION = 1  # part of the cache key: bump when decoding changes, so that old caches are rebuilt


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


def decode_image(path: Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8: upright (EXIF), RGB, shorter side resized to `size`, centre-cropped square."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that is enough
            image = to_rgb(ImageOps.exif_transpose(image))
            return np.asarray(ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC))


def shorter_side(path: Path) -> int:
    """The photo's shorter side in px, from its header: what decode_image resized to the cache resolution."""
    with Image.open(path) as image:
        return min(image.size)


def failure_kind(path: Path, error: Exception) -> str:
    """A short name for why a file could not be decoded, for the skip report. It must not raise: a file deleted
    or made unreadable since the listing is named like any other bad file, not allowed to stop the build."""
    if isinstance(error, FileNotFoundError):
        return "vanished"
    try:
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
