"""One image file to an upright RGB uint8 square, or a short reason why it cannot be decoded.

Microsoft's archive holds zero-byte files, truncated JPEGs, other formats under .jpg names, CMYK, grayscale
and palette images; every one either decodes to RGB here or is named for the skip report.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

VERSION = 3  # part of the cache key: bump when decoding or the cache record changes (3: perceptual hashes)

# A photo's identity, whatever its name, format, file size or encoding: two int64 numbers. The first, a 64-bit
# perceptual hash: the signs of the low-frequency DCT coefficients of its grey square at HASH_SIDE px, against their
# median; the second, its mean colour (R, G, B, one byte each). Two photos are one when their hashes differ in at
# most NEAR_BITS bits and their mean colours by at most NEAR_LEVELS levels in every channel. Measured on the 4,000
# 200 px JPEGs against the same photos among the 23,000 112 px WebP files (docs/protocol.md): 3,998 of the 4,000 pairs
# within 8 bits (all within 10). The colour keeps apart pictures of one layout in other colours (the demo set's
# shapes), which the grey hash alone takes for one.
HASH_SIDE = 32
NEAR_BITS = 8
NEAR_LEVELS = 16
HASH_KIND = "dct-32px-64bit+mean-rgb"  # recorded in SimSiam checkpoints: identities of another kind cannot be compared
_k = np.arange(HASH_SIDE)
_DCT = np.cos(np.pi * (2 * _k[None, :] + 1) * _k[:, None] / (2 * HASH_SIDE))  # DCT-II rows (unnormalised)


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


def square(source, size: int) -> tuple[np.ndarray, int, int]:
    """((size, size, 3) uint8: upright (EXIF), RGB, shorter side resized to `size`, centre-cropped square; the
    photo's shorter side in px before resizing; its perceptual hash), from a path or a binary file."""
    with warnings.catch_warnings():
        # up to twice Pillow's limit (179 megapixels) a photo decodes: phones take 108-megapixel ones, and a JPEG is
        # decoded at 1/8 scale where that is enough (draft); beyond, Pillow raises DecompressionBombError
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(source) as image:
            side = min(image.size)
            wanted = max(size, HASH_SIDE)
            image.draft("RGB", (wanted, wanted))  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that is enough
            image = to_rgb(ImageOps.exif_transpose(image))
            return (np.asarray(ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)), side,
                    perceptual_hash(image))


def decode_image(source, size: int) -> np.ndarray:
    """The (size, size, 3) uint8 square of `square`."""
    return square(source, size)[0]


decode_file = square  # (the square, the shorter side, the perceptual hash) of the photo at a path


def perceptual_hash(image: Image.Image) -> tuple[int, int]:
    """A photo's identity (above): (the grey hash as a signed 64-bit integer, whose bit 0 is always 0 since the DC
    coefficient, the mean brightness, is left out, and bits 1-63 say which of the 8 x 8 lowest-frequency DCT
    coefficients of its centre square lie above their median; its mean colour, R << 16 | G << 8 | B)."""
    small = np.asarray(ImageOps.fit(image, (HASH_SIDE, HASH_SIDE), Image.Resampling.BOX), np.float64)
    grey = small @ np.array([0.299, 0.587, 0.114])
    coefficients = (_DCT @ grey @ _DCT.T)[:8, :8].flatten()[1:]
    bits = np.concatenate([[False], coefficients > np.median(coefficients)])
    red, green, blue = small.mean(axis=(0, 1)).round().astype(int)
    return (int.from_bytes(np.packbits(bits, bitorder="little").tobytes(), "little", signed=True),
            int(red) << 16 | int(green) << 8 | int(blue))


def hash_bits(hashes: torch.Tensor) -> torch.Tensor:
    """(N, 64) float32 0/1: the bits of N int64 grey hashes."""
    return ((hashes.unsqueeze(1) >> torch.arange(64)) & 1).float()


def colours(identities: torch.Tensor) -> torch.Tensor:
    """(N, 3) int64: the mean colours of N identities (N, 2)."""
    return (identities[:, 1:] >> torch.tensor([16, 8, 0])) & 255


def near(identities: torch.Tensor, others: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """(N,) bool: whether each of N photos, by their identities (N, 2), is one of the photos `others` (M, 2): the
    grey hashes within NEAR_BITS bits (Hamming distance |a| + |b| - 2 a.b over their bits) and the mean colours
    within NEAR_LEVELS, `chunk` rows at a time."""
    found = torch.zeros(len(identities), dtype=torch.bool)
    if len(identities) == 0 or len(others) == 0:
        return found
    other_bits, other_colours = hash_bits(others[:, 0]), colours(others)
    other_counts = other_bits.sum(1)
    for start in range(0, len(identities), chunk):
        rows = identities[start:start + chunk]
        bits = hash_bits(rows[:, 0])
        distance = bits.sum(1, keepdim=True) + other_counts - 2 * bits @ other_bits.T
        same_colour = ((colours(rows)[:, None] - other_colours[None]).abs() <= NEAR_LEVELS).all(2)
        found[start:start + chunk] = ((distance <= NEAR_BITS) & same_colour).any(1)
    return found


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
    if isinstance(error, Image.DecompressionBombError):
        return (f"too many pixels (over {2 * Image.MAX_IMAGE_PIXELS / 1e6:,.0f} megapixels, Pillow's limit against "
                f"decompression bombs)")
    if isinstance(error, Image.UnidentifiedImageError):
        if path.suffix.lower() in (".heic", ".heif", ".avif"):
            return f"{path.suffix[1:].upper()} photo that this Pillow cannot decode (convert it to JPEG)"
        return "not an image"
    if "truncated" in str(error).lower():
        return "truncated image"
    return f"unreadable ({type(error).__name__})"
