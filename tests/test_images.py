import io

import numpy as np
import pytest
from PIL import Image

from pipeline.modality.image.decoding import (
    UnreadableImage,
    decode_image,
    fit_image,
    natural_key,
    pixel_hash,
)

from .conftest import class_image


def _save(path, img, fmt=None, **kw):
    img.save(path, format=fmt, **kw)
    return path


def test_modes_convert_to_rgb_uint8(tmp_path):
    rgb = class_image(0, 0)
    cases = {
        "grey.png": Image.fromarray(rgb[:, :, 0]),
        "palette.png": Image.fromarray(rgb).convert("P"),
        "alpha.png": Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "deep.png": Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257),
    }
    assert cases["deep.png"].mode.startswith("I")
    for name, img in cases.items():
        out = decode_image(_save(tmp_path / name, img), max_pixels=10**6)
        assert out.dtype == np.uint8 and out.shape == (20, 20, 3), name
    grey = decode_image(tmp_path / "grey.png", max_pixels=10**6)
    deep = decode_image(tmp_path / "deep.png", max_pixels=10**6)
    assert np.array_equal(grey, deep)  # 16-bit keeps its top 8 bits
    opaque = decode_image(tmp_path / "alpha.png", max_pixels=10**6)
    assert np.array_equal(opaque, rgb)


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    out = decode_image(_save(tmp_path / "t.png", Image.fromarray(rgba)), max_pixels=100)
    assert (out == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(np.zeros((10, 30, 3), np.uint8))  # 30 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif.tobytes())
    assert decode_image(path, max_pixels=10**6).shape == (30, 10, 3)


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"this is not an image", "not an image"),
])
def test_broken_files_are_unreadable_with_a_reason(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(UnreadableImage, match=reason):
        decode_image(path, max_pixels=10**6)


def test_truncated_file_is_unreadable(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(class_image(1, 1, size=64)).save(buf, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(UnreadableImage, match="truncated"):
        decode_image(path, max_pixels=10**6)


def test_pixel_limit_and_missing_file(tmp_path):
    path = _save(tmp_path / "big.png", Image.fromarray(class_image(0, 0)))
    with pytest.raises(UnreadableImage, match="above the pixel limit 399"):
        decode_image(path, max_pixels=399)
    with pytest.raises(UnreadableImage, match="not found"):
        decode_image(tmp_path / "nope.png", max_pixels=10)


def test_pixel_hash_ignores_encoding(tmp_path):
    img = Image.fromarray(class_image(2, 3))
    a = decode_image(_save(tmp_path / "a.png", img), max_pixels=10**6)
    b = decode_image(_save(tmp_path / "b.bmp", img), max_pixels=10**6)
    assert pixel_hash(a) == pixel_hash(b)
    assert pixel_hash(a) != pixel_hash(a[:, ::-1])


@pytest.mark.parametrize("fit", ["crop", "pad", "stretch"])
def test_fit_image_gives_square(fit):
    assert fit_image(np.zeros((10, 30, 3), np.uint8), 16, fit=fit).shape == (16, 16, 3)


def test_natural_key_sorts_numbers_as_numbers():
    assert sorted(["10", "2", "1", "b", "a"], key=natural_key) == ["1", "2", "10", "a", "b"]
