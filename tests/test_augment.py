"""Tests for augment.py: each batched operation against torchvision's single-image version on fixed parameters, the
crop boxes' distribution against RandomResizedCrop's, the shape, range, seeding and per-image independence of the
views, and the statistics of the random choices. Small float images in [0, 1] on the CPU, plus emulated CUDA."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import RandomResizedCrop

import augment
from emulated_cuda import emulated_cuda

H, W = 32, 40  # not square, so that a swapped x / y shows


def generator(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@pytest.fixture
def images() -> torch.Tensor:
    """(4, 3, H, W) float images, uniform in [0, 1]."""
    return torch.rand(4, 3, H, W, generator=generator(0))


@pytest.fixture
def quantised() -> torch.Tensor:
    """(4, 3, H, W) float images with values in {0, 1/3, 2/3, 1}: many gray pixels and ties between channels,
    the special cases of the HSV conversion."""
    return torch.randint(0, 4, (4, 3, H, W), generator=generator(1)).float() / 3


def uint8_batch(n: int, size: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=generator(seed), dtype=torch.uint8)


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(augment.MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(augment.STD, device=x.device).view(1, 3, 1, 1)
    return x * std + mean


# ---------------------------------------------------------------- resized_crop against torchvision


def pixel_box(top: int, left: int, height: int, width: int, image_height: int = H, image_width: int = W
              ) -> list[float]:
    """A (top, left, height, width) pixel box as (centre x, centre y, width, height) in [-1, 1]."""
    return [(2 * left + width) / image_width - 1, (2 * top + height) / image_height - 1,
            width / image_width, height / image_height]


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("pixel_boxes, size", [
    pytest.param([(0, 0, H, W), (2, 3, 24, 20), (5, 10, 20, 30), (10, 1, 16, 16)], 12, id="downsampling"),
    pytest.param([(0, 0, H, W)] * 4, 48, id="whole-image-upsampling"),
    pytest.param([(4, 5, 20, 20), (0, 0, 24, 30), (12, 20, 20, 20), (2, 1, 30, 39)], 40, id="upsampling"),
])
def test_resized_crop_matches_torchvision(images, pixel_boxes, size, flip):
    """On pixel-aligned boxes, one per image, resized_crop (+ flip) equals torchvision's
    resized_crop(antialias=False) (+ hflip) image by image, border pixels included."""
    boxes = torch.tensor([pixel_box(*box) for box in pixel_boxes])
    ours = augment.resized_crop(images, boxes, torch.full((len(images),), flip), size)
    theirs = [TF.resized_crop(image, *box, [size, size], antialias=False) for image, box in zip(images, pixel_boxes)]
    theirs = torch.stack([TF.hflip(image) if flip else image for image in theirs])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- colour operations against torchvision

COLOUR_CASES = {  # name: (ours, torchvision's, one parameter per image, tolerance)
    "brightness": (augment.adjust_brightness, TF.adjust_brightness, [0.6, 1.0, 1.25, 1.4], 1e-6),
    "contrast": (augment.adjust_contrast, TF.adjust_contrast, [0.0, 0.6, 1.0, 1.4], 1e-6),
    "saturation": (augment.adjust_saturation, TF.adjust_saturation, [0.0, 0.6, 1.0, 1.4], 1e-6),
    "hue": (augment.adjust_hue, TF.adjust_hue, [-0.5, -0.1, 0.05, 0.1], 1e-5),
}


@pytest.mark.parametrize("values", ["images", "quantised"])
@pytest.mark.parametrize("name", COLOUR_CASES)
def test_colour_adjustment_matches_torchvision(name, values, request):
    """adjust_brightness / contrast / saturation / hue with a different factor per image equal torchvision's
    function applied image by image."""
    x = request.getfixturevalue(values)
    ours_fn, theirs_fn, factors, tolerance = COLOUR_CASES[name]
    ours = ours_fn(x, torch.tensor(factors))
    theirs = torch.stack([theirs_fn(image, factor) for image, factor in zip(x, factors)])
    torch.testing.assert_close(ours, theirs, atol=tolerance, rtol=0)


def test_grayscale_as_applied_matches_torchvision(images):
    """blend(x, grayscale(x), keep), as colour_augment applies grayscale, gives torchvision's 3-channel
    rgb_to_grayscale where keep is 0 and the image itself where keep is 1."""
    keep = torch.tensor([0.0, 1.0, 0.0, 1.0])
    ours = augment.blend(images, augment.grayscale(images), keep)
    theirs = torch.stack([TF.rgb_to_grayscale(image, num_output_channels=3) if k == 0 else image
                          for image, k in zip(images, keep)])
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kernel, sigmas", [(13, [0.1, 0.5, 1.0, 2.0]), (3, [0.02, 0.1, 0.2, 0.29])],
                         ids=["224px-views", "32px-views"])
def test_gaussian_blur_matches_torchvision(images, kernel, sigmas):
    """gaussian_blur with a different sigma per image equals torchvision's gaussian_blur(kernel, sigma) image by
    image, at the kernel sizes of 224 px and 32 px views."""
    ours = augment.gaussian_blur(images, torch.tensor(sigmas), kernel)
    theirs = torch.stack([TF.gaussian_blur(image, kernel_size=[kernel, kernel], sigma=[s, s])
                          for image, s in zip(images, sigmas)])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_blur_scales_with_the_view_side():
    """MoCo v2's sigma range (0.1-2 px) and 13-tap kernel at 224 px; a smaller view gets the same range as a
    fraction of its side (0.014-0.29 px at 32 px, 3 taps), so a 32 px view is not blurred seven times as much."""
    assert augment.blur_sigma_range(224) == pytest.approx(augment.BLUR_SIGMA) and augment.blur_kernel(224) == 13
    low, high = augment.blur_sigma_range(32)
    assert low == pytest.approx(0.1 / 7) and high == pytest.approx(2 / 7) and augment.blur_kernel(32) == 3
    assert augment.blur_kernel(150) == 11 and augment.blur_kernel(16) == 3
    # with the view's own side as the reference (train.py --blur-reference-size 32): 0.1-2 px, 13 taps
    assert augment.blur_sigma_range(32, 32) == pytest.approx(augment.BLUR_SIGMA) and augment.blur_kernel(32, 32) == 13


def test_normalize_matches_torchvision(images):
    """normalize equals torchvision's normalize with augment.MEAN and augment.STD."""
    torch.testing.assert_close(augment.normalize(images),
                               TF.normalize(images, mean=list(augment.MEAN), std=list(augment.STD)),
                               atol=1e-6, rtol=0)


IDENTITY_CASES = {  # the parameters colour_augment gives an image that a random choice leaves alone
    "brightness": (augment.adjust_brightness, 1.0),
    "contrast": (augment.adjust_contrast, 1.0),
    "saturation": (augment.adjust_saturation, 1.0),
    "hue": (augment.adjust_hue, 0.0),
    "blur": (lambda x, sigma: augment.gaussian_blur(x, sigma, 13), 1e-3),
}


@pytest.mark.parametrize("values", ["images", "quantised"])
@pytest.mark.parametrize("name", IDENTITY_CASES)
def test_identity_parameters_leave_images_unchanged(name, values, request):
    """Factor 1, hue shift 0 (an RGB -> HSV -> RGB round trip, gray pixels and ties included) and blur sigma 1e-3
    leave an image unchanged."""
    x = request.getfixturevalue(values)
    function, parameter = IDENTITY_CASES[name]
    torch.testing.assert_close(function(x, torch.full((len(x),), parameter)), x, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- crop boxes

def test_crop_boxes_are_drawn_per_image_within_bounds():
    """random_crop_boxes(n, side) gives n distinct boxes, each inside the image, with width and height in (0, 1],
    area within CROP_SCALE and aspect ratio within CROP_RATIO up to the rounding of the sides to pixels."""
    n, side = 1000, 1024  # a fine pixel grid, on which 1000 boxes are distinct
    boxes = augment.random_crop_boxes(n, side, generator(3))
    centre_x, centre_y, width, height = boxes.unbind(1)
    assert boxes.shape == (n, 4) and len(torch.unique(boxes, dim=0)) == n
    assert ((width > 0) & (width <= 1) & (height > 0) & (height <= 1)).all()
    assert (centre_x.abs() + width <= 1 + 1e-6).all() and (centre_y.abs() + height <= 1 + 1e-6).all()
    area, aspect = width * height, width / height
    rounding = 2 / side  # half a pixel on each side changes area and aspect by less than this
    assert ((area >= augment.CROP_SCALE[0] - rounding) & (area <= augment.CROP_SCALE[1])).all()
    assert ((aspect >= augment.CROP_RATIO[0] - rounding) & (aspect <= augment.CROP_RATIO[1] + rounding)).all()


def test_crop_boxes_are_pixel_aligned():
    """Every box's left, top, width and height are whole pixels of the side x side image, so resized_crop on it
    equals torchvision's resized_crop (tested above)."""
    side = 74
    centre_x, centre_y, width, height = augment.random_crop_boxes(1000, side, generator(13)).double().unbind(1)
    pixels = torch.stack([(centre_x - width + 1) * side / 2, (centre_y - height + 1) * side / 2,
                          width * side, height * side])  # (4, n) left, top, width, height
    assert (pixels - pixels.round()).abs().max() < 1e-4


SIDE = 74  # the cache side for 64 px views: ceil(64 * 8 / 7)
DRAWS = 5000


def torchvision_crop_boxes(n: int, side: int, seed: int, scale=augment.CROP_SCALE, ratio=augment.CROP_RATIO
                           ) -> torch.Tensor:
    """(n, 4) boxes drawn by torchvision's RandomResizedCrop.get_params on a side x side image, in our format."""
    image = torch.zeros(1, side, side)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        params = [RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(n)]
    return torch.tensor([pixel_box(*box, image_height=side, image_width=side) for box in params])


def clamped_crop_sides(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(width, height), each (n,), of a plausible wrong sampler: one (area, aspect) draw per image, a side larger
    than the image clamped to it."""
    area = augment.uniform(*augment.CROP_SCALE, n, generator)
    aspect = torch.exp(augment.uniform(*[math.log(r) for r in augment.CROP_RATIO], n, generator))
    return torch.sqrt(area * aspect).clamp(max=1.0), torch.sqrt(area / aspect).clamp(max=1.0)


def crop_statistics(width: torch.Tensor, height: torch.Tensor) -> dict[str, tuple[float, float]]:
    """{name: (estimate, standard error)} of the area and aspect ratio of (n,) boxes' width and height."""
    width, height = width.double(), height.double()
    area, log_aspect = width * height, (width / height).log().abs()
    samples = {"mean area": area, "area > 0.75": (area > 0.75).double(),
               "full width": (width > 1 - 1e-6).double(), "mean |log aspect|": log_aspect}
    return {name: (x.mean().item(), x.std().item() / math.sqrt(len(x))) for name, x in samples.items()}


def differing_statistics(ours: dict, theirs: dict, standard_errors: float = 4.0) -> list[str]:
    """The names of the statistics whose estimates differ by more than `standard_errors` of their difference."""
    return [name for name, (estimate, error) in ours.items()
            if abs(estimate - theirs[name][0]) > standard_errors * math.hypot(error, theirs[name][1])]


@pytest.fixture(scope="module")
def torchvision_statistics() -> dict[str, tuple[float, float]]:
    boxes = torchvision_crop_boxes(DRAWS, SIDE, seed=16)
    return crop_statistics(boxes[:, 2], boxes[:, 3])


def test_crop_box_statistics_match_torchvision(torchvision_statistics):
    """Over 5000 draws on a 74 px image, the mean area, the fraction of areas above 0.75, the fraction of
    full-width boxes and the mean |log aspect ratio| of random_crop_boxes equal those of torchvision's
    RandomResizedCrop.get_params within 4 standard errors (torchvision: mean area about 0.54, 19% above 0.75,
    2% full width)."""
    boxes = augment.random_crop_boxes(DRAWS, SIDE, generator(17))
    assert differing_statistics(crop_statistics(boxes[:, 2], boxes[:, 3]), torchvision_statistics) == []


def test_crop_box_statistics_reject_the_clamped_sampler(torchvision_statistics):
    """The comparison above has the power to fail: the sampler that clamps oversized sides (mean area about 0.59,
    31% above 0.75, 8% full width) differs from torchvision in mean area, area above 0.75 and full width."""
    statistics = crop_statistics(*clamped_crop_sides(DRAWS, generator(17)))
    assert {"mean area", "area > 0.75", "full width"} <= set(differing_statistics(statistics, torchvision_statistics))


@pytest.mark.parametrize("scale, ratio", [
    ((1.5, 2.0), augment.CROP_RATIO),  # too large an area: the whole image
    ((1.0, 1.0), (2.0, 3.0)),  # too wide at full area: full width, height side / 2
    ((1.0, 1.0), (1 / 3, 1 / 2)),  # too tall at full area: full height, width side / 2
])
def test_crop_box_fallback_is_torchvision_centre_crop(scale, ratio):
    """When none of the candidates fits, random_crop_boxes gives torchvision's centre crop, with the aspect ratio
    clamped to `ratio`, on an odd side where the centring rounds."""
    ours = augment.random_crop_boxes(3, 75, generator(18), scale=scale, ratio=ratio)
    theirs = torchvision_crop_boxes(3, 75, seed=18, scale=scale, ratio=ratio)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- the views

RANDOM_VIEWS = {"simsiam_view": augment.simsiam_view, "crop_flip_view": augment.crop_flip_view}
SEEDED = {**RANDOM_VIEWS, "random_crop_boxes": lambda batch, size, generator: augment.random_crop_boxes(
    len(batch), batch.shape[-1], generator)}


@pytest.mark.parametrize("name", RANDOM_VIEWS)
def test_view_shape_dtype_and_range(name):
    """A view of a uint8 (B, 3, S, S) batch is a finite float32 (B, 3, size, size) batch whose un-normalised
    values lie in [0, 1]."""
    view = RANDOM_VIEWS[name](uint8_batch(6, 40), 24, generator(4))
    assert view.shape == (6, 3, 24, 24) and view.dtype == torch.float32 and torch.isfinite(view).all()
    pixels = unnormalize(view)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


@pytest.mark.parametrize("name", SEEDED)
def test_random_draws_are_a_function_of_the_seed(name):
    """Generators seeded the same give identical outputs; differently seeded ones give different outputs."""
    batch, function = uint8_batch(8, 32), SEEDED[name]
    first = function(batch, 24, generator(6))
    assert torch.equal(first, function(batch, 24, generator(6)))
    assert not torch.allclose(first, function(batch, 24, generator(7)))


@pytest.mark.parametrize("name", RANDOM_VIEWS)
def test_views_augment_each_image_independently(name):
    """A batch of identical images gives pairwise different views."""
    view = RANDOM_VIEWS[name](uint8_batch(1, 32).expand(8, -1, -1, -1), 32, generator(5))
    for i, j in itertools.combinations(range(len(view)), 2):
        assert (view[i] - view[j]).abs().max() > 1e-3, (i, j)


def test_center_view_is_torchvision_antialiased_resize_then_normalize():
    """center_view is the (B, 3, size, size) antialiased bilinear resize of the whole image, normalised."""
    batch = uint8_batch(3, 40)
    view = augment.center_view(batch, 24)
    assert view.shape == (3, 3, 24, 24) and view.dtype == torch.float32
    expected = TF.normalize(TF.resize(batch.float() / 255, [24, 24], antialias=True),
                            mean=list(augment.MEAN), std=list(augment.STD))
    torch.testing.assert_close(view, expected, atol=1e-5, rtol=0)


def test_views_stay_on_the_generator_device():
    """On (emulated) CUDA, with the batch and the generator on cuda:0, every random draw takes the generator of its
    device and the three views come back as finite float32 batches on cuda:0."""
    with emulated_cuda():
        batch = uint8_batch(4, 32).to("cuda:0")
        views = [augment.simsiam_view(batch, 24, generator(12, "cuda:0")),
                 augment.crop_flip_view(batch, 24, generator(12, "cuda:0")), augment.center_view(batch, 24)]
        for view in views:
            assert view.device == torch.device("cuda:0") and view.shape == (4, 3, 24, 24)
            assert view.dtype == torch.float32 and bool(torch.isfinite(view).all())


# ---------------------------------------------------------------- statistics of the random choices


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_chance_is_true_with_probability_p(p):
    """The mean of chance(p, 20000) is p (within 0.02, about 7 standard deviations)."""
    assert abs(augment.chance(p, 20_000, generator(9)).float().mean().item() - p) < 0.02


def recording(parameters: dict, name: str, function):
    """`function`, storing the parameter (and the kernel size, for the blur) each call receives in parameters."""
    def wrapper(x, parameter, *args):
        parameters[name], parameters[name + " args"] = parameter.clone(), args
        return function(x, parameter, *args)
    return wrapper


RECORDED = ["adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue", "gaussian_blur"]


@pytest.fixture(scope="module")
def recorded_colour_augment():
    """colour_augment of 10000 colourful 16 x 16 images (model.MIN_IMAGE_SIZE), with the parameter each adjustment
    received: (output, {function name: (B,) parameters})."""
    parameters = {}
    with pytest.MonkeyPatch.context() as patch:
        for name in RECORDED:
            patch.setattr(augment, name, recording(parameters, name, getattr(augment, name)))
        output = augment.colour_augment(torch.rand(10_000, 3, 16, 16, generator=generator(10)), generator(11))
    return output, parameters


def jittered(parameters: dict) -> torch.Tensor:
    return parameters["adjust_brightness"] != 1


def test_colour_jitter_probability(recorded_colour_augment):
    """The fraction of images colour-jittered is JITTER_PROBABILITY (within 0.02, about 5 standard deviations)."""
    _, parameters = recorded_colour_augment
    assert abs(jittered(parameters).float().mean().item() - augment.JITTER_PROBABILITY) < 0.02


def test_colour_jitter_is_one_choice_per_image(recorded_colour_augment):
    """An image is jittered in brightness, contrast, saturation and hue together, or in none of them (identity
    parameters 1, 1, 1, 0)."""
    _, parameters = recorded_colour_augment
    chosen = jittered(parameters)
    assert torch.equal(parameters["adjust_contrast"] != 1, chosen)
    assert torch.equal(parameters["adjust_saturation"] != 1, chosen)
    assert torch.equal(parameters["adjust_hue"] != 0, chosen)


@pytest.mark.parametrize("name, low, high", [
    ("adjust_brightness", 1 - augment.BRIGHTNESS, 1 + augment.BRIGHTNESS),
    ("adjust_contrast", 1 - augment.CONTRAST, 1 + augment.CONTRAST),
    ("adjust_saturation", 1 - augment.SATURATION, 1 + augment.SATURATION),
    ("adjust_hue", -augment.HUE, augment.HUE),
])
def test_colour_jitter_factors_span_their_range(recorded_colour_augment, name, low, high):
    """The jittered images' factors lie in [1 - 0.4, 1 + 0.4] (hue shift in [-0.1, 0.1]) and reach within 1% of
    both ends."""
    _, parameters = recorded_colour_augment
    values = parameters[name][jittered(parameters)]
    margin = 0.01 * (high - low)
    assert low <= values.min() < low + margin and high - margin < values.max() <= high


def test_blur_probability_and_sigma_range(recorded_colour_augment):
    """Half the images (BLUR_PROBABILITY, within 0.02) get a sigma spanning the 16 px views' range (within 1% of
    both ends) with the 16 px views' kernel, the others the identity sigma 1e-3."""
    _, parameters = recorded_colour_augment
    sigma = parameters["gaussian_blur"]
    low, high = augment.blur_sigma_range(16)
    blurred = sigma >= low
    assert abs(blurred.float().mean().item() - augment.BLUR_PROBABILITY) < 0.02
    assert (sigma[~blurred] <= 1e-3).all() and parameters["gaussian_blur args"] == (augment.blur_kernel(16),)
    margin = 0.01 * (high - low)
    assert sigma[blurred].min() < low + margin and high - margin < sigma[blurred].max() <= high


def test_colour_augment_grayscale_fraction(recorded_colour_augment):
    """On colourful images, the fraction of colour_augment outputs with all channels equal (grayscale) is
    GRAYSCALE_PROBABILITY (within 0.02, about 5 standard deviations)."""
    output, _ = recorded_colour_augment
    gray = (output.amax(dim=1) - output.amin(dim=1)).flatten(1).amax(dim=1) < 1e-6
    assert abs(gray.float().mean().item() - augment.GRAYSCALE_PROBABILITY) < 0.02


def test_simsiam_view_blurs_as_its_blur_reference_says(monkeypatch):
    """simsiam_view(..., blur_reference=16) of 16 px views draws MoCo v2's own sigmas (0.1-2 px) with a 13-tap
    kernel: train.py --blur-reference-size reaches the blur."""
    parameters = {}
    monkeypatch.setattr(augment, "gaussian_blur", recording(parameters, "blur", augment.gaussian_blur))
    augment.simsiam_view(uint8_batch(400, 18), 16, generator(20), blur_reference=16)
    sigma = parameters["blur"][parameters["blur"] > 1e-3]
    assert parameters["blur args"] == (13,) and 0.1 <= sigma.min() < 0.2 and 1.9 < sigma.max() <= 2.0
