"""One image reader for training, prediction and the up-front data check: pixels the way a viewer shows them.

    from mcvqa.images import read_image
    rgb = read_image("photo.jpg")          # 8-bit RGB PIL image, EXIF orientation applied

- EXIF orientation is applied (a portrait phone photo stays portrait), as transformers' `load_image` does.
- 16-bit greyscale (I;16, I;16B, ...) is scaled from 0..65535 to 0..255, not clipped at 255. 32-bit
  integers (I) holding 0..65535 are read as 16-bit (what older Pillow makes of a 16-bit PNG); other ranges
  are stretched from their minimum to their maximum. Floats (F) in 0..1 are scaled by 255, floats in 0..255
  kept, any other range stretched; NaN and infinities count as 0.
- Transparency (RGBA, LA, PA, a palette or tRNS transparent colour) is composited over `BACKGROUND`
  (white), so a black shape drawn on a transparent canvas stays a black shape.
- Palette, CMYK, YCbCr, 1-bit and L images are converted to RGB; an animation gives its first frame.

`image_problem` checks a file up front (missing, empty, unreadable, over `MAX_PIXELS`, an aspect ratio over
`MAX_ASPECT_RATIO`) from its header, without decoding the pixels, so `mcvqa.data` can name the CSV row
before training starts; `read_image` refuses the same images with the path named.
"""

import os
import re
import warnings

import numpy as np
from PIL import Image, ImageOps

from mcvqa.errors import UserError

BACKGROUND = (255, 255, 255)
# Qwen-VL's smart resize refuses a longer side over 200 times the shorter one (collator.fit_pixels too).
MAX_ASPECT_RATIO = 200
# Pillow's own decompression-bomb error threshold (2 x Image.MAX_IMAGE_PIXELS): a 108-megapixel phone
# photo still passes (200-megapixel ones do not); a small file that decodes to gigabytes does not.
MAX_PIXELS = 178_956_970

# Reasons `image_problem` returns, worded for one image and for several (mcvqa.data lists the rows).
REASONS = {
    "missing": ("image file does not exist", "image files do not exist"),
    "directory": ("image path is a directory, not a file", "image paths are directories, not files"),
    "empty": ("image file is empty (0 bytes)", "image files are empty (0 bytes)"),
    "invalid": ("image file is not a readable image", "image files are not readable images"),
    "too_large": (f"image has more than {MAX_PIXELS:,} pixels (a possible decompression bomb; downscale it)",
                  f"images have more than {MAX_PIXELS:,} pixels (possible decompression bombs; downscale them)"),
    "aspect": (f"image is more than {MAX_ASPECT_RATIO} times longer than wide (Qwen-VL cannot resize it; "
               "crop or pad it)",
               f"images are more than {MAX_ASPECT_RATIO} times longer than wide (Qwen-VL cannot resize them; "
               "crop or pad them)"),
}

# What Pillow raises on a damaged or unsupported file, while opening or while decoding.
_READ_ERRORS = (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError)
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


def size_problem(width, height):
    """'too_large' or 'aspect' when an image of this size cannot be used, else None."""
    if width * height > MAX_PIXELS:
        return "too_large"
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        return "aspect"
    return None


def _open(path):
    with warnings.catch_warnings():
        # Between Image.MAX_IMAGE_PIXELS and MAX_PIXELS Pillow only warns; the size is judged here instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def image_problem(path):
    """(reason, detail) when `path` cannot be used as an image, else None; reason is a key of REASONS and
    detail a short text for the listing (the size) or None. Reads the header only, then Pillow's verify."""
    if not os.path.exists(path):
        return "missing", None
    if os.path.isdir(path):
        return "directory", None
    try:
        if os.path.getsize(path) == 0:
            return "empty", None
        with _open(path) as im:
            reason = size_problem(*im.size)
            if reason:
                return reason, f"{im.width}x{im.height}"
            im.verify()
    except Image.DecompressionBombError as err:
        # Pillow refuses before the size can be read back; its message carries the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(err))
        return "too_large", f"{int(found.group(1)):,} pixels" if found else None
    except Exception:  # noqa: BLE001 - any other failure means "not a usable image"
        return "invalid", None
    return None


def read_image(path, background=BACKGROUND):
    """The image at `path` as 8-bit RGB, oriented and composited as described in the module docstring.
    Raises UserError naming the path when the file cannot be read or is over the size limits."""
    try:
        with _open(path) as im:
            reason = size_problem(*im.size)
            if reason:
                raise UserError(f"{path}: {REASONS[reason][0]} ({im.width}x{im.height})")
            return to_rgb(im, background)
    except _READ_ERRORS as err:
        raise UserError(f"{path}: cannot read image ({err})") from None


def to_rgb(image, background=BACKGROUND):
    """An opened PIL image -> 8-bit RGB: EXIF orientation, bit depth and transparency handled."""
    image = _oriented(image)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _high_depth_to_rgba(image)
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _oriented(image):
    try:
        return ImageOps.exif_transpose(image)
    except _READ_ERRORS + (KeyError, TypeError):
        # Unparseable EXIF: a viewer cannot rotate it either, so the stored orientation is what it shows.
        image.load()
        return image


def _has_alpha(image):
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return True
    return image.mode == "P" and image.palette is not None and image.palette.mode == "RGBA"


def _high_depth_to_rgba(image):
    """I;16*, I (32-bit int) and F (32-bit float) -> L, or LA when a tRNS value marks transparent pixels."""
    values = np.asarray(image)
    transparent = image.info.get("transparency")
    a = values.astype(np.float64)
    a[~np.isfinite(a)] = 0.0
    if image.mode.startswith("I;16"):
        scaled = a * (255.0 / 65535.0)
    elif image.mode == "I" and a.min() >= 0 and a.max() <= 65535:
        scaled = a * (255.0 / 65535.0)
    elif image.mode == "F" and a.min() >= 0 and a.max() <= 1:
        scaled = a * 255.0
    elif image.mode == "F" and a.min() >= 0 and a.max() <= 255:
        scaled = a
    else:
        lo, hi = a.min(), a.max()
        scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    grey = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
    if isinstance(transparent, (int, float)):
        alpha = Image.fromarray(np.where(values == transparent, 0, 255).astype(np.uint8))
        grey = Image.merge("LA", (grey, alpha))
    return grey
