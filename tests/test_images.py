"""mcvqa/images.py: every kind of image file comes out as the RGB a viewer shows, or is refused up front.

Each test writes a real file of one kind with Pillow and checks pixel statistics after `read_image`.
"""

import csv
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mcvqa.data import load_split
from mcvqa.errors import UserError
from mcvqa.images import MAX_ASPECT_RATIO, image_problem, read_image, to_rgb

RED, BLUE, BLACK = (255, 0, 0), (0, 0, 255), (0, 0, 0)


def pixels(image):
    assert image.mode == "RGB"
    return np.asarray(image).astype(float)


def circle_mask(size=64, radius=16):
    yy, xx = np.mgrid[:size, :size]
    return (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 <= radius**2


def assert_black_disc_on_white(image, size=64, radius=16):
    """The disc of circle_mask is black, the rest white (a few anti-aliasing pixels aside)."""
    a = pixels(image).mean(axis=2)
    inside, edge = circle_mask(size, radius - 1), circle_mask(size, radius + 1)
    assert a[inside].max() < 10
    assert a[~edge].min() > 245
    assert abs((a < 128).mean() - circle_mask(size, radius).mean()) < 0.02


# ----------------------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("orientation, top", [(6, RED), (8, BLUE), (1, None)])
def test_exif_orientation_is_applied(tmp_path, orientation, top):
    """A phone stores a portrait photo as a landscape frame plus an EXIF tag; it must come out portrait."""
    stored = Image.new("RGB", (64, 32), RED)
    stored.paste(BLUE, (32, 0, 64, 32))  # left half red, right half blue as stored
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"phone_{orientation}.jpg"
    stored.save(path, exif=exif, quality=95)

    image = read_image(path)
    if orientation == 1:
        assert image.size == (64, 32)
        return
    assert image.size == (32, 64)  # portrait
    a = pixels(image)
    # 6 = rotate 90 degrees clockwise to display: the stored left edge becomes the top; 8 the reverse.
    bottom = BLUE if top == RED else RED
    assert np.abs(a[:28].mean(axis=(0, 1)) - top).max() < 8
    assert np.abs(a[36:].mean(axis=(0, 1)) - bottom).max() < 8


# ----------------------------------------------------------------------------------------- bit depth


def gradient16(height=16, width=256):
    return np.tile(np.linspace(0, 65535, width).round().astype(np.uint16), (height, 1))


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(gradient16()).save(path)
    assert Image.open(path).mode.startswith("I;16")
    a = pixels(read_image(path))
    assert a.min() == 0 and a.max() == 255
    assert abs(a.mean() - 127.5) < 1  # clipping at 255 would give ~254
    assert (np.diff(a[0, :, 0]) >= 0).all()  # still a gradient, left to right
    assert np.abs(a[..., 0] - a[..., 1]).max() == 0  # grey


def test_16_bit_big_endian_tiff(tmp_path):
    path = tmp_path / "grey16b.tif"
    Image.fromarray(gradient16().astype(">u2")).save(path)
    assert Image.open(path).mode == "I;16B"
    a = pixels(read_image(path))
    assert a.min() == 0 and a.max() == 255 and abs(a.mean() - 127.5) < 1


def test_16_bit_mid_grey_maps_to_mid_grey(tmp_path):
    path = tmp_path / "mid.png"
    Image.fromarray(np.full((8, 8), 128 * 257, np.uint16)).save(path)
    assert (pixels(read_image(path)) == 128).all()


def test_32_bit_int_holding_16_bit_values(tmp_path):
    """Mode I is what older Pillow makes of a 16-bit PNG: 0..65535 is read on the 16-bit scale."""
    path = tmp_path / "int32.tif"
    Image.fromarray(gradient16().astype(np.int32)).save(path)
    assert Image.open(path).mode == "I"
    a = pixels(read_image(path))
    assert a.min() == 0 and a.max() == 255 and abs(a.mean() - 127.5) < 1


def test_32_bit_int_outside_16_bit_range_is_stretched(tmp_path):
    path = tmp_path / "signed.tif"
    values = np.tile(np.linspace(-1_000_000, 3_000_000, 256).astype(np.int32), (4, 1))
    Image.fromarray(values).save(path)
    a = pixels(read_image(path))
    assert a.min() == 0 and a.max() == 255 and abs(a.mean() - 127.5) < 1


@pytest.mark.parametrize("top, expected_mean", [(1.0, 127.5), (255.0, 127.5), (1000.0, 127.5), (0.5, 63.75)])
def test_float_images(tmp_path, top, expected_mean):
    """0..1 floats x255, 0..255 floats as they are, wider ranges stretched to 0..255."""
    path = tmp_path / f"float_{top}.tif"
    Image.fromarray(np.tile(np.linspace(0, top, 256, dtype=np.float32), (4, 1))).save(path)
    assert Image.open(path).mode == "F"
    a = pixels(read_image(path))
    assert a.min() == 0 and abs(a.mean() - expected_mean) < 1


def test_float_nan_counts_as_zero(tmp_path):
    values = np.full((4, 4), 0.5, np.float32)
    values[0, 0] = np.nan
    a = pixels(to_rgb(Image.fromarray(values)))
    assert a[0, 0, 0] == 0 and (a[1:] == 128).all()


# ----------------------------------------------------------------------------------------- transparency


def black_disc_rgba(size=64, radius=16):
    """Black everywhere; only the alpha channel draws the disc (transparent background)."""
    alpha = np.where(circle_mask(size, radius), 255, 0).astype(np.uint8)
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., 3] = alpha
    return Image.fromarray(rgba)


def test_rgba_shape_on_transparent_background_is_composited_over_white(tmp_path):
    path = tmp_path / "disc.png"
    black_disc_rgba().save(path)
    naive = pixels(Image.open(path).convert("RGB"))
    assert naive.max() == 0  # what dropping the alpha channel shows: uniform black
    assert_black_disc_on_white(read_image(path))


def test_la_shape_on_transparent_background(tmp_path):
    path = tmp_path / "disc_la.png"
    black_disc_rgba().convert("LA").save(path)
    assert Image.open(path).mode == "LA"
    assert_black_disc_on_white(read_image(path))


def test_half_transparent_black_is_mid_grey(tmp_path):
    path = tmp_path / "half.png"
    Image.new("RGBA", (8, 8), (0, 0, 0, 128)).save(path)
    assert np.abs(pixels(read_image(path)) - 127).max() <= 1


def test_background_can_be_chosen(tmp_path):
    path = tmp_path / "disc.png"
    black_disc_rgba().save(path)
    a = pixels(read_image(path, background=(0, 128, 0)))
    assert tuple(a[0, 0]) == (0, 128, 0)


def test_palette_with_transparent_index(tmp_path):
    """A GIF/PNG palette image whose index 0 is transparent: the background shows white."""
    image = Image.new("P", (64, 64), 0)
    image.putpalette([0, 0, 0] * 2 + [0] * 762)  # index 0 and 1 both black
    ImageDraw.Draw(image).ellipse((16, 16, 47, 47), fill=1)
    for suffix in ("gif", "png"):
        path = tmp_path / f"disc.{suffix}"
        image.save(path, transparency=0)
        assert Image.open(path).mode == "P"
        a = pixels(read_image(path)).mean(axis=2)
        assert a[0, 0] == 255 and a[32, 32] == 0
        assert 0.15 < (a < 128).mean() < 0.30  # the disc (pi/16 of the square is ~0.2)


def test_pa_mode(tmp_path):
    pa = black_disc_rgba().convert("PA")
    assert pa.mode == "PA"
    assert_black_disc_on_white(to_rgb(pa))


def test_rgb_png_with_transparent_colour(tmp_path):
    """tRNS on an RGB PNG: one colour (here black) is transparent."""
    path = tmp_path / "trns.png"
    image = Image.new("RGB", (8, 8), BLACK)
    image.paste(RED, (0, 0, 4, 8))
    image.save(path, transparency=BLACK)
    a = pixels(read_image(path))
    assert (a[:, :4] == RED).all() and (a[:, 4:] == 255).all()


def test_16_bit_grey_with_transparent_value(tmp_path):
    path = tmp_path / "trns16.png"
    values = np.full((8, 8), 257 * 10, np.uint16)
    values[:, 4:] = 0
    Image.fromarray(values).save(path, transparency=0)
    a = pixels(read_image(path))
    assert (a[:, :4] == 10).all() and (a[:, 4:] == 255).all()


# ----------------------------------------------------------------------------------------- other modes


def test_palette_cmyk_bilevel_and_grey(tmp_path):
    rgb = Image.new("RGB", (8, 8), RED)
    rgb.paste(BLUE, (4, 0, 8, 8))

    rgb.convert("P").save(tmp_path / "palette.png")
    assert (pixels(read_image(tmp_path / "palette.png")) == pixels(rgb)).all()

    # CMYK JPEG (print workflows): cyan 0, magenta 255, yellow 255 is red.
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    assert np.abs(pixels(read_image(tmp_path / "cmyk.jpg")).mean(axis=(0, 1)) - RED).max() < 8

    bilevel = Image.new("1", (8, 8), 0)
    bilevel.paste(1, (0, 0, 4, 8))
    bilevel.save(tmp_path / "bilevel.png")
    a = pixels(read_image(tmp_path / "bilevel.png"))
    assert (a[:, :4] == 255).all() and (a[:, 4:] == 0).all()

    Image.new("L", (8, 8), 77).save(tmp_path / "grey.png")
    assert (pixels(read_image(tmp_path / "grey.png")) == 77).all()

    # An ordinary RGB file is returned untouched.
    rgb.save(tmp_path / "rgb.png")
    assert (pixels(read_image(tmp_path / "rgb.png")) == pixels(rgb)).all()


# ----------------------------------------------------------------------------------------- limits


def png_header_only(path, width, height):
    """A PNG whose header claims width x height but that holds no pixel data: a decompression-bomb header,
    written in microseconds (Pillow refuses it from the header alone)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)  # the start of the first row only
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_extreme_aspect_ratio_is_refused(tmp_path):
    wide = tmp_path / "wide.png"
    Image.new("L", (20000, 20), 200).save(wide)
    assert image_problem(wide) == ("aspect", "20000x20")
    with pytest.raises(UserError, match=r"wide\.png: image is more than 200 times longer than wide .*20000x20"):
        read_image(wide)

    tall = tmp_path / "tall.png"
    Image.new("L", (1, MAX_ASPECT_RATIO), 0).save(tall)  # exactly at the limit: accepted
    assert image_problem(tall) is None
    assert read_image(tall).size == (1, MAX_ASPECT_RATIO)


def test_decompression_bomb_is_refused_from_the_header(tmp_path):
    bomb = png_header_only(tmp_path / "bomb.png", 30000, 30000)
    assert image_problem(bomb) == ("too_large", "900,000,000 pixels")
    with pytest.raises(UserError, match="bomb.png: cannot read image"):
        read_image(bomb)


def test_unreadable_files(tmp_path):
    assert image_problem(tmp_path / "nope.png") == ("missing", None)
    assert image_problem(tmp_path) == ("directory", None)
    (tmp_path / "empty.png").write_bytes(b"")
    assert image_problem(tmp_path / "empty.png") == ("empty", None)
    (tmp_path / "text.png").write_text("not an image")
    assert image_problem(tmp_path / "text.png") == ("invalid", None)
    with pytest.raises(UserError, match="text.png: cannot read image"):
        read_image(tmp_path / "text.png")
    full = tmp_path / "full.jpg"
    Image.new("RGB", (64, 64), RED).save(full)
    (tmp_path / "cut.jpg").write_bytes(full.read_bytes()[:300])  # truncated mid-scan
    with pytest.raises(UserError, match="cut.jpg: cannot read image"):
        read_image(tmp_path / "cut.jpg")


def test_csv_validation_names_the_row_of_an_extreme_or_oversized_image(tmp_path):
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    Image.new("RGB", (8, 8), RED).save(data / "img" / "ok.png")
    Image.new("L", (20000, 20), 200).save(data / "img" / "wide.png")
    png_header_only(data / "img" / "bomb.png", 30000, 30000)
    images = ["img/ok.png", "img/wide.png", "img/ok.png", "img/bomb.png"]
    with open(data / "train.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "path", "question", "a", "b", "c", "d", "answer"])
        w.writerows([[f"q{i}", p, "what shape?", "circle", "square", "triangle", "star", "a"]
                     for i, p in enumerate(images)])

    with pytest.raises(UserError) as exc:
        load_split(data, "train")
    msg = str(exc.value)
    assert "2 problems" in msg
    wide_line = next(line for line in msg.splitlines() if "wide.png" in line)
    assert "train.csv: column 'path': 1 image is more than 200 times longer than wide" in wide_line
    assert "line 3 ('img/wide.png' -> " in wide_line and "20000x20)" in wide_line
    bomb_line = next(line for line in msg.splitlines() if "bomb.png" in line)
    assert "pixels (a possible decompression bomb" in bomb_line and "line 5 (" in bomb_line
    assert "900,000,000 pixels)" in bomb_line


def test_training_and_prediction_read_through_the_same_reader(tmp_path, processor):
    """collator.ImageEncoder (training and predict.py) sees the oriented, composited image and refuses an
    extreme aspect ratio with the path named instead of failing inside the resize."""
    from collator import ImageEncoder

    encoder = ImageEncoder(processor.image_processor, 56 * 56, 56 * 56)
    stored = Image.new("RGB", (64, 32), RED)
    stored.paste(BLUE, (32, 0, 64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    image = encoder.load(str(tmp_path / "phone.jpg"))
    assert image.height > image.width
    a = pixels(image)
    assert a[: image.height // 3, :, 0].mean() > 200 and a[-image.height // 3:, :, 2].mean() > 200

    black_disc_rgba().save(tmp_path / "disc.png")
    a = pixels(encoder.load(str(tmp_path / "disc.png")))
    assert a[0, 0].min() > 245 and a[a.shape[0] // 2, a.shape[1] // 2].max() < 10

    Image.new("L", (20000, 20), 200).save(tmp_path / "wide.png")
    with pytest.raises(UserError, match="wide.png: image is more than 200 times longer"):
        encoder(str(tmp_path / "wide.png"))
