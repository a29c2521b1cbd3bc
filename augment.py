"""The SimSiam / MoCo v2 augmentations (SimSiam paper, appendix A; the constants below) as pure batched tensor functions
of a uint8 batch and a torch.Generator on its device: no per-image Python loop, no host synchronisation, the same code
on CPU and GPU. An image a random choice leaves alone gets identity parameters (factor 1, shift 0, sigma near 0): the
same arithmetic for all. Deviations, for speed: the flip is folded into the crop's resampling (colour and the symmetric
blur commute with it); the jitter's four factors apply in a fixed order (torchvision shuffles it); the crop is resized
bilinearly without antialiasing (the cache is 8/7 of the view, so a crop shrinks by at most that)."""
import math

import torch
import torch.nn.functional as F

MEAN = (0.485, 0.456, 0.406)  # ImageNet channel statistics, as in the paper's normalisation
STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale

CROP_SCALE = (0.2, 1.0)  # fraction of the image area, MoCo v2 (v1 used 0.08, which SimSiam drops)
CROP_RATIO = (3 / 4, 4 / 3)  # width / height
CROP_TRIES = 10  # candidate boxes per image before the centre-crop fallback, as torchvision
JITTER_PROBABILITY = 0.8
BRIGHTNESS = CONTRAST = SATURATION = 0.4  # factors drawn from [1 - 0.4, 1 + 0.4]
HUE = 0.1  # hue shift drawn from [-0.1, 0.1] of a full turn
GRAYSCALE_PROBABILITY = 0.2
BLUR_PROBABILITY = 0.5
BLUR_SIGMA = (0.1, 2.0)  # pixels of a BLUR_REFERENCE_SIZE crop; scaled with the view's side (blur_sigma_range)
BLUR_REFERENCE_SIZE = 224  # MoCo v2's crops, for which its sigma range was chosen

def uniform(low: float, high: float, shape: int | tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=generator.device)

def chance(p: float, n: int, generator: torch.Generator) -> torch.Tensor:  # (n,) booleans, True with probability p
    return torch.rand(n, generator=generator, device=generator.device) < p

# ---------------------------------------------------------------- geometry

def random_crop_boxes(n: int, side: int, generator: torch.Generator,
                      scale=CROP_SCALE, ratio=CROP_RATIO) -> torch.Tensor:
    """(n, 4) pixel-aligned boxes (centre x, centre y, width, height) in grid_sample's [-1, 1] coordinates, drawn as
    torchvision's RandomResizedCrop.get_params: the first of CROP_TRIES candidates that fits, else the centre crop."""
    area = uniform(*scale, (n, CROP_TRIES), generator)
    aspect = torch.exp(uniform(math.log(ratio[0]), math.log(ratio[1]), (n, CROP_TRIES), generator))
    width = torch.round(side * torch.sqrt(area * aspect))  # (n, CROP_TRIES) pixels
    height = torch.round(side * torch.sqrt(area / aspect))
    fits = (width > 0) & (width <= side) & (height > 0) & (height <= side)
    found = fits.any(dim=1)  # (n,) False where none of the candidates fits
    first = fits.int().argmax(dim=1, keepdim=True)  # (n, 1) the first candidate that fits
    fallback_width = round(side * ratio[1]) if ratio[1] < 1 else side  # torchvision's centre crop of a square
    fallback_height = round(side / ratio[0]) if ratio[0] > 1 else side
    width = torch.where(found, width.gather(1, first).squeeze(1), fallback_width)  # (n,) pixels
    height = torch.where(found, height.gather(1, first).squeeze(1), fallback_height)
    left = torch.where(found, torch.floor(uniform(0, 1, n, generator) * (side - width + 1)), (side - width) // 2)
    top = torch.where(found, torch.floor(uniform(0, 1, n, generator) * (side - height + 1)), (side - height) // 2)
    return torch.stack([(2 * left + width) / side - 1, (2 * top + height) / side - 1, width / side, height / side], 1)

def resized_crop(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each image to its box, mirror it where flip is True, and resize to size x size, in one bilinear
    resampling. Matches torchvision's resized_crop(antialias=False) (+ hflip) on pixel-aligned boxes."""
    centre_x, centre_y, width, height = boxes.unbind(1)
    sign, zero = 1.0 - 2.0 * flip.to(x.dtype), torch.zeros_like(width)  # sign -1 mirrors the sampling grid
    theta = torch.stack([torch.stack([width * sign, zero, centre_x], 1),
                         torch.stack([zero, height, centre_y], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), [x.shape[0], x.shape[1], size, size], align_corners=False)
    # keep samples between the box's first and last pixel centres, as crop-then-resize does: (B, 2) bounds
    height_px, width_px = x.shape[-2:]
    low = torch.stack([centre_x - width + 1 / width_px, centre_y - height + 1 / height_px], 1)
    high = torch.stack([centre_x + width - 1 / width_px, centre_y + height - 1 / height_px], 1)
    grid = torch.clamp(grid, min=low[:, None, None].to(x.dtype), max=high[:, None, None].to(x.dtype))
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

# ---------------------------------------------------------------- colour, on floats in [0, 1]

def grayscale(x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 1, H, W) luma
    return (x * torch.tensor(GRAY_WEIGHTS, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)

def blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:  # as torchvision's _blend
    factor = factor.view(-1, 1, 1, 1)
    return (factor * x + (1 - factor) * other).clamp(0, 1)

def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(x, torch.zeros_like(x), factor)

def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)

def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(x, grayscale(x), factor)

def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) RGB in [0, 1] -> HSV, hue in [0, 1)
    r, g, b = x.unbind(1)
    value, _ = x.max(dim=1)
    delta = value - x.min(dim=1).values
    saturation = delta / torch.where(value > 0, value, torch.ones_like(value))
    safe_delta = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (value - r) / safe_delta, (value - g) / safe_delta, (value - b) / safe_delta
    hue = torch.where(value == r, bc - gc, torch.where(value == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(delta > 0, (hue / 6.0) % 1.0, torch.zeros_like(hue))
    return torch.stack([hue, saturation, value], dim=1)

def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    # channel n of (r, g, b) = (5, 3, 1) is v - v * s * clamp(min(k, 4 - k), 0, 1) with k = (n + 6 * hue) mod 6
    hue, saturation, value = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = (n + 6.0 * hue) % 6.0  # (B, 3, H, W)
    return value - value * saturation * torch.minimum(k, 4.0 - k).clamp(0, 1)

def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:  # `shift` in turns, in HSV as torchvision's
    hsv = rgb_to_hsv(x)
    hue = (hsv[:, 0] + shift.view(-1, 1, 1)) % 1.0
    return hsv_to_rgb(torch.cat([hue.unsqueeze(1), hsv[:, 1:]], dim=1))

def blur_sigma_range(size: int, reference: int = BLUR_REFERENCE_SIZE) -> tuple[float, float]:  # px, size x size views
    return BLUR_SIGMA[0] * size / reference, BLUR_SIGMA[1] * size / reference

def blur_kernel(size: int, reference: int = BLUR_REFERENCE_SIZE) -> int:
    """2 ceil(3 max sigma) + 1, covering +-3 sigma: 13 at 224 px, 3 at 32 px (13 at any size with reference = size)."""
    return 2 * math.ceil(3 * blur_sigma_range(size, reference)[1]) + 1

def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Each image blurred with its own sigma (px), separably with reflect padding, as torchvision's gaussian_blur."""
    batch, channels, height, width = x.shape
    half = kernel_size // 2
    offsets = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)  # (K,)
    kernel = torch.exp(-0.5 * (offsets / sigma.to(x.dtype)[:, None]) ** 2)  # (B, K)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # (B * C, K)
    y = F.pad(x.reshape(1, batch * channels, height, width), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, kernel[:, None, None, :], groups=batch * channels)  # along rows
    y = F.conv2d(y, kernel[:, None, :, None], groups=batch * channels)  # along columns
    return y.reshape(batch, channels, height, width)

def normalize(x: torch.Tensor) -> torch.Tensor:
    mean, std = (torch.tensor(value, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) for value in (MEAN, STD))
    return (x - mean) / std

# ---------------------------------------------------------------- the views the scripts use

def to_float(images: torch.Tensor) -> torch.Tensor:  # uint8 (B, 3, S, S) -> float32 in [0, 1]
    return images.float().div_(255)

def colour_augment(x: torch.Tensor, generator: torch.Generator,
                   blur_reference: int = BLUR_REFERENCE_SIZE) -> torch.Tensor:
    n = x.shape[0]
    jitter = chance(JITTER_PROBABILITY, n, generator)
    ones, zeros = torch.ones(n, device=x.device), torch.zeros(n, device=x.device)
    x = adjust_brightness(x, torch.where(jitter, uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS, n, generator), ones))
    x = adjust_contrast(x, torch.where(jitter, uniform(1 - CONTRAST, 1 + CONTRAST, n, generator), ones))
    x = adjust_saturation(x, torch.where(jitter, uniform(1 - SATURATION, 1 + SATURATION, n, generator), ones))
    x = adjust_hue(x, torch.where(jitter, uniform(-HUE, HUE, n, generator), zeros))
    x = blend(x, grayscale(x), (~chance(GRAYSCALE_PROBABILITY, n, generator)).float())
    side = x.shape[-1]
    sigma = torch.where(chance(BLUR_PROBABILITY, n, generator),
                        uniform(*blur_sigma_range(side, blur_reference), n, generator), zeros + 1e-3)
    return gaussian_blur(x, sigma, blur_kernel(side, blur_reference))

def simsiam_view(images: torch.Tensor, size: int, generator: torch.Generator,
                 blur_reference: int = BLUR_REFERENCE_SIZE) -> torch.Tensor:
    """One augmented view of a uint8 batch (B, 3, S, S): normalised float32 (B, 3, size, size)."""
    return crop_flip_view(images, size, generator, lambda x: colour_augment(x, generator, blur_reference))

def crop_flip_view(images: torch.Tensor, size: int, generator: torch.Generator, then=lambda x: x) -> torch.Tensor:
    """The classifier's training view: random resized crop and flip only (`then`: more), normalised."""
    n, side = images.shape[0], images.shape[-1]
    return normalize(then(resized_crop(to_float(images), random_crop_boxes(n, side, generator),
                                       chance(0.5, n, generator), size)))

def center_view(images: torch.Tensor, size: int) -> torch.Tensor:  # the evaluation view: the whole image, antialiased
    return normalize(F.interpolate(to_float(images), size, mode="bilinear", antialias=True, align_corners=False))
