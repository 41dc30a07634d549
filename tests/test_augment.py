import numpy as np
import pytest
import torch

from pipeline.contracts.cachefiles import NpyRows
from pipeline.core.config import parse_sections
from pipeline.modality.image.augment import make_views, view_transform
from pipeline.modality.image.model import random_flip_shift

from .conftest import class_image, repo_params


def _augment(**overrides):
    params = repo_params(**{f"cache.augment.{k}": v for k, v in overrides.items()})
    return parse_sections(params, "cache")[0].augment


@pytest.mark.parametrize("auto", ["none", "randaugment", "trivialaugment"])
def test_views_are_byte_identical_for_the_same_seed(auto):
    transform = view_transform(_augment(auto=auto, hflip=True, erasing=0.5), 16)
    pixels = class_image(1, 2, size=40)
    a = make_views(pixels, transform, views=3, size=16, seed=7, row=5)
    torch.rand(10)  # global RNG state in between must not matter
    b = make_views(pixels, transform, views=3, size=16, seed=7, row=5)
    assert a.shape == (3, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a[0], a[1])  # views differ from each other
    other_row = make_views(pixels, transform, views=3, size=16, seed=7, row=6)
    other_seed = make_views(pixels, transform, views=3, size=16, seed=8, row=5)
    assert not np.array_equal(a, other_row) and not np.array_equal(a, other_seed)


def test_flip_and_shift_change_every_call_but_follow_the_generator():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = random_flip_shift(x, hflip=True, shift=2, generator=g1)
    b = random_flip_shift(x, hflip=True, shift=2, generator=g2)
    assert a.shape == x.shape and torch.equal(a, b)
    outs = {random_flip_shift(x, hflip=True, shift=2, generator=g1)[0].sum().item()
            for _ in range(20)}
    assert len(outs) > 1
    assert torch.equal(random_flip_shift(x, hflip=False, shift=0, generator=g1), x)


def test_shift_moves_content_by_at_most_shift_pixels():
    x = torch.zeros(64, 1, 9, 9)
    x[:, :, 4, 4] = 1
    out = random_flip_shift(x, hflip=False, shift=2, generator=torch.Generator().manual_seed(1))
    where = out[:, 0].flatten(1).argmax(1)
    rows, cols = where // 9, where % 9
    assert rows.min() >= 2 and rows.max() <= 6 and cols.min() >= 2 and cols.max() <= 6
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 5


def test_npy_rows_reads_rows_like_numpy(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, (50, 4, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", data)
    rows = NpyRows(tmp_path / "a.npy")
    index = np.array([0, 3, 49, 3])
    assert len(rows) == 50 and np.array_equal(rows[index], data[index])
    with pytest.raises(IndexError):
        rows[np.array([50])]
