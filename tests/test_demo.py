import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits

from pipeline.stages import demo


def test_demo_writes_every_digit_as_a_png(tmp_path):
    count = demo.run(tmp_path / "images", tmp_path / "manifest.csv")
    files = sorted((tmp_path / "images").rglob("*.png"))
    assert count == len(files) == 1797
    manifest = pd.read_csv(tmp_path / "manifest.csv", dtype=str)
    assert len(manifest) == 1797 and set(manifest["label"]) == {str(d) for d in range(10)}
    first = np.asarray(Image.open(tmp_path / "images" / manifest["path"][0]))
    expected = np.round(load_digits().images[0] * 255 / 16).astype(np.uint8)
    assert np.array_equal(first, expected)
