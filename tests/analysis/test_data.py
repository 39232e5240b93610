"""The shared image loader: folders, npz, builtin sources, splits, cache and errors."""

from __future__ import annotations

import logging
import zlib

import numpy as np
import pytest
from PIL import Image

from memekit.analysis.data import (
    DataError,
    dead_leaves,
    load_images,
    reference_mask,
    to_model_range,
)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("MEMEKIT_CACHE", str(path))
    return path


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (20, 20)) -> Image.Image:
    return Image.new("RGB", size, colour)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    solid((200, 10, 50)).save(root / "a.png")
    solid((10, 200, 50)).save(root / "b.jpg", quality=95)
    # 40 wide x 20 high: the center crop keeps columns 10..29 (green), not the blue sides
    wide = np.zeros((20, 40, 3), dtype=np.uint8)
    wide[:, :10] = wide[:, 30:] = (0, 0, 255)
    wide[:, 10:30] = (0, 255, 0)
    Image.fromarray(wide).save(root / "c.png")
    Image.new("L", (16, 16), 77).save(root / "sub" / "d.png")  # grey, one channel
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "notes.txt").write_text("ignored: not an image suffix")
    return root


# ---- folders -----------------------------------------------------------------------------------------------
def test_folder_reads_images_recursively_in_path_order(folder, caplog):
    with caplog.at_level(logging.WARNING):
        images = load_images(str(folder), 16, progress=False)
    assert images.shape == (4, 16, 16, 3) and images.dtype == np.uint8
    assert np.all(images[0] == (200, 10, 50))  # a.png: bicubic resize of a constant is the constant
    assert np.abs(images[1].astype(int) - (10, 200, 50)).max() <= 4  # b.jpg: JPEG rounding
    assert np.all(images[2] == (0, 255, 0))  # c.png: center crop
    assert np.all(images[3] == 77)  # sub/d.png: grey -> RGB
    assert "skipped 1 unreadable" in caplog.text  # broken.png


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .jpg"):
        load_images(str(tmp_path / "empty"), 8)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match="none of the 1 image files"):
        load_images(str(tmp_path / "bad"), 8)
    with pytest.raises(DataError, match="does not exist"):
        load_images(str(tmp_path / "missing"), 8)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="neither a folder nor an .npz"):
        load_images(str(tmp_path / "file.txt"), 8)


# ---- npz ---------------------------------------------------------------------------------------------------
@pytest.fixture
def pixels():
    return np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "float", "float-nchw"])
def test_npz_layouts_load_to_the_same_uint8_nhwc(tmp_path, pixels, layout):
    array = {"nhwc": pixels, "nchw": pixels.transpose(0, 3, 1, 2), "float": pixels / 255.0,
             "float-nchw": (pixels / 255.0).astype(np.float32).transpose(0, 3, 1, 2)}[layout]
    np.savez(tmp_path / "x.npz", images=array)
    np.testing.assert_array_equal(load_images(str(tmp_path / "x.npz"), 8), pixels)


def test_npz_single_channel_is_repeated_and_resized(tmp_path):
    grey = np.full((2, 12, 12, 1), 99, dtype=np.uint8)
    np.savez(tmp_path / "g.npz", images=grey)
    images = load_images(str(tmp_path / "g.npz"), 6)
    assert images.shape == (2, 6, 6, 3) and np.all(images == 99)


@pytest.mark.parametrize("content,message", [
    (dict(pictures=np.zeros((1, 4, 4, 3), np.uint8)), "no 'images' array"),
    (dict(images=np.zeros((0, 4, 4, 3), np.uint8)), "non-empty"),
    (dict(images=np.zeros((4, 4, 3), np.uint8)), "non-empty"),
    (dict(images=np.zeros((1, 4, 4, 2), np.uint8)), "1 or 3 channels"),
    (dict(images=np.full((1, 4, 4, 3), 2.0)), "float in \\[0, 1\\]"),
    (dict(images=np.full((1, 4, 4, 3), np.nan)), "float in \\[0, 1\\]"),
    (dict(images=np.zeros((1, 4, 4, 3), np.int32)), "uint8"),
])
def test_npz_with_bad_content_is_rejected(tmp_path, content, message):
    np.savez(tmp_path / "bad.npz", **content)
    with pytest.raises(DataError, match=message):
        load_images(str(tmp_path / "bad.npz"), 4)


@pytest.mark.parametrize("raw", [b"", b"PK\x03\x04 truncated zip", b"plain text"])
def test_broken_npz_files_raise_data_error(tmp_path, raw):
    (tmp_path / "broken.npz").write_bytes(raw)
    with pytest.raises(DataError, match="cannot read"):
        load_images(str(tmp_path / "broken.npz"), 4)


# ---- builtin -----------------------------------------------------------------------------------------------
def test_builtin_has_requested_count_and_resolution_and_is_deterministic():
    images = load_images("builtin:shapes:6", 24, use_cache=False)
    assert images.shape == (6, 24, 24, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, load_images("builtin:shapes:6", 24, use_cache=False))
    np.testing.assert_array_equal(images, dead_leaves(6, 24))
    np.testing.assert_array_equal(load_images("builtin:shapes:3", 24, use_cache=False), images[:3])
    assert len(np.unique(images.reshape(6, -1), axis=0)) == 6  # distinct images
    assert load_images("builtin:shapes:2", 9, use_cache=False).shape == (2, 9, 9, 3)


@pytest.mark.parametrize("source", ["builtin:circles", "builtin:shapes:0", "builtin:shapes:x", "builtin:shapes:1:2"])
def test_bad_builtin_sources(source):
    with pytest.raises(DataError, match="built-in|image count"):
        load_images(source, 8)


# ---- splits, limit, cache, range ----------------------------------------------------------------------------
def test_splits_are_disjoint_cover_all_and_follow_crc32():
    n = 60
    everything = load_images(f"builtin:shapes:{n}", 8)
    train = load_images(f"builtin:shapes:{n}", 8, split="train")
    reference = load_images(f"builtin:shapes:{n}", 8, split="reference")
    in_reference = np.array([zlib.crc32(str(i).encode()) % 10 == 0 for i in range(n)])
    assert 0 < in_reference.sum() < n
    np.testing.assert_array_equal(reference, everything[in_reference])
    np.testing.assert_array_equal(train, everything[~in_reference])
    assert len(train) + len(reference) == n
    np.testing.assert_array_equal(reference_mask([str(i) for i in range(n)]), in_reference)


def test_folder_splits_are_keyed_by_relative_path(folder):
    keys = ["a.png", "b.jpg", "c.png", "sub/d.png"]
    mask = np.array([zlib.crc32(k.encode()) % 10 == 0 for k in keys])
    everything = load_images(str(folder), 8)
    if mask.any():
        np.testing.assert_array_equal(load_images(str(folder), 8, split="reference"), everything[mask])
    else:
        with pytest.raises(DataError, match="reference split .* is empty"):
            load_images(str(folder), 8, split="reference")
    np.testing.assert_array_equal(load_images(str(folder), 8, split="train"), everything[~mask])


def test_limit_and_argument_errors():
    assert len(load_images("builtin:shapes:5", 8, limit=2)) == 2
    with pytest.raises(DataError, match="limit"):
        load_images("builtin:shapes:5", 8, limit=0)
    with pytest.raises(DataError, match="split"):
        load_images("builtin:shapes:5", 8, split="test")
    with pytest.raises(DataError, match="resolution"):
        load_images("builtin:shapes:5", 0)


def test_cache_is_written_under_memekit_cache_and_reused(cache, folder):
    first = load_images(str(folder), 8)
    files = list((cache / "data").glob("*-8.npz"))
    assert len(files) == 1
    np.testing.assert_array_equal(load_images(str(folder), 8), first)
    np.testing.assert_array_equal(load_images(str(folder), 8, use_cache=False), first)


def test_to_model_range_maps_uint8_to_unit_interval_nchw():
    x = to_model_range(np.array([[[[0, 255, 127]]]], dtype=np.uint8))
    assert tuple(x.shape) == (1, 3, 1, 1)
    np.testing.assert_allclose(x.flatten().numpy(), [-1.0, 1.0, 127 / 127.5 - 1], rtol=1e-6)
