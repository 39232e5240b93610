"""Transparent and grey images load as a viewer shows them, and the loader says what it did.

Expected pixels are the closed form of alpha compositing onto an opaque background,
``round((a c + (255 - a) b) / 255)``, computed here in floating point from the pixels written.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
from PIL import Image

from memekit.analysis.data import (
    DEFAULT_BACKGROUND,
    DataError,
    load_images,
    parse_background,
    read_images,
    source_fingerprint,
)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("MEMEKIT_CACHE", str(path))
    return path


def over(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """The closed form: straight-alpha RGBA over an opaque background, rounded to the nearest integer."""
    a = rgba[..., 3:4].astype(float) / 255
    return np.floor(a * rgba[..., :3] + (1 - a) * np.array(background, float) + 0.5).astype(np.uint8)


def sprite() -> np.ndarray:
    """8 x 8 RGBA: every alpha from 0 to 255 in steps, over colours that must not show where alpha is 0."""
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    rgba[0, :, 3] = 0  # fully transparent row over random colours (a "box" convert("RGB") would show)
    rgba[1, :, 3] = 255
    rgba[0, :, :3] = 0  # black under the transparency, as in the sets of the issue
    return rgba


def palette_sprite() -> tuple[Image.Image, np.ndarray]:
    """A palette image whose entry 0 is fully transparent and entry 1 half transparent (tRNS bytes), and
    the RGBA it stands for."""
    colours = np.array([[0, 0, 0], [250, 20, 30], [10, 200, 40]], dtype=np.uint8)
    alpha = np.array([0, 128, 255], dtype=np.uint8)
    index = np.tile(np.array([0, 1, 2, 2, 1, 0, 0, 2], dtype=np.uint8), (8, 1))
    img = Image.fromarray(index, mode="P")
    img.putpalette(colours.flatten().tolist() + [0] * (768 - colours.size))
    img.info["transparency"] = alpha.tobytes()
    rgba = np.concatenate([colours[index], alpha[index][..., None]], axis=-1)
    return img, rgba


@pytest.fixture
def sprites(tmp_path):
    """a.png RGBA, b.png palette with transparency, c.png grey, d.png opaque RGB."""
    root = tmp_path / "sprites"
    root.mkdir()
    Image.fromarray(sprite(), mode="RGBA").save(root / "a.png")
    palette, _ = palette_sprite()
    palette.save(root / "b.png", transparency=palette.info["transparency"])
    Image.fromarray(np.full((8, 8), 90, np.uint8), mode="L").save(root / "c.png")
    Image.fromarray(sprite()[..., :3]).save(root / "d.png")
    return root


def test_rgba_and_palette_images_are_composited_in_closed_form(sprites):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no PIL warning about palette transparency
        images = load_images(str(sprites), 8, progress=False)
    assert np.array_equal(images[0], over(sprite(), DEFAULT_BACKGROUND))
    assert np.all(images[0][0] == 128)  # alpha 0: the background, not the black underneath
    assert np.array_equal(images[0][1], sprite()[1, :, :3])  # alpha 255: the colour itself
    assert np.array_equal(images[1], over(palette_sprite()[1], DEFAULT_BACKGROUND))
    assert np.all(images[2] == 90)  # grey repeated into RGB
    assert np.array_equal(images[3], sprite()[..., :3])  # opaque RGB untouched


def test_background_is_a_parameter_and_keys_the_cache(sprites, cache):
    grey = load_images(str(sprites), 8, progress=False)
    white = load_images(str(sprites), 8, progress=False, background=(255, 255, 255))
    assert np.array_equal(white[0], over(sprite(), (255, 255, 255)))
    assert np.array_equal(white[1], over(palette_sprite()[1], (255, 255, 255)))
    assert np.array_equal(white[2:], grey[2:])  # opaque images do not depend on it
    assert len(list((cache / "data").glob("*.npz"))) == 2  # one cache per background
    again = load_images(str(sprites), 8, progress=False)  # from the cache
    assert np.array_equal(again, grey)
    assert source_fingerprint(str(sprites)) != source_fingerprint(str(sprites), (0, 0, 0))


def test_jpeg_only_folders_keep_their_fingerprint(tmp_path):
    (tmp_path / "jpg").mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "jpg" / "x.jpg")
    assert source_fingerprint(str(tmp_path / "jpg")) == source_fingerprint(str(tmp_path / "jpg"), (0, 0, 0))


def test_counts_are_reported_once_per_load(sprites, caplog):
    lines: list[str] = []
    load_images(str(sprites), 8, progress=False, say=lines.append)
    assert lines == [f"{sprites}: composited 2 images with transparency onto grey (128, 128, 128), "
                     "converted 1 grey image to RGB"]
    with caplog.at_level(logging.WARNING):
        load_images(str(sprites), 8, progress=False, background=(0, 0, 0))  # no say: a log warning
        load_images(str(sprites), 8, progress=False, background=(0, 0, 0))  # from the cache: said again
    assert caplog.text.count("composited 2 images with transparency onto black (0, 0, 0)") == 2
    lines.clear()
    load_images(str(sprites), 8, progress=False, limit=1, say=lines.append)
    assert lines == [f"{sprites}: composited 1 image with transparency onto grey (128, 128, 128)"]


def test_opaque_rgb_folders_say_nothing(tmp_path):
    (tmp_path / "rgb").mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "rgb" / "x.png")
    Image.new("RGBA", (8, 8), (4, 5, 6, 255)).save(tmp_path / "rgb" / "y.png")  # alpha, but all opaque
    lines: list[str] = []
    images = load_images(str(tmp_path / "rgb"), 8, progress=False, say=lines.append)
    assert lines == [] and np.all(images[1] == (4, 5, 6))


def test_caches_without_counts_are_decoded_again(sprites, cache):
    load_images(str(sprites), 8, progress=False)
    (path,) = (cache / "data").glob("*.npz")
    with np.load(path) as data:
        keys = data["keys"]
    np.savez(path, images=np.zeros((4, 8, 8, 3), np.uint8), keys=keys)  # as an older memekit wrote it
    assert np.all(load_images(str(sprites), 8, progress=False)[2] == 90)


def test_read_images_composites_too(sprites):
    lines: list[str] = []
    images, keys = read_images(str(sprites), ["b.png", "a.png"], 8, background=(0, 0, 255), say=lines.append)
    assert keys == ["b.png", "a.png"]
    assert np.array_equal(images[1], over(sprite(), (0, 0, 255)))
    assert lines == [f"{sprites}: composited 2 images with transparency onto (0, 0, 255)"]


@pytest.mark.parametrize(("text", "rgb"), [("grey", (128, 128, 128)), ("White", (255, 255, 255)),
                                           ("10, 20,30", (10, 20, 30)), ("#0a141E", (10, 20, 30))])
def test_parse_background(text, rgb):
    assert parse_background(text) == rgb


@pytest.mark.parametrize("text", ["purple", "1,2", "0,0,256", "#12345", "-1,0,0"])
def test_bad_backgrounds_are_one_line_errors(text):
    with pytest.raises(DataError, match="not a colour") as err:
        parse_background(text)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="three integers"):
        load_images("builtin:shapes:4", 8, background=(0, 0))
