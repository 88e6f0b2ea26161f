"""advjax.plots: the figures are written, and bad input fails instead of drawing something wrong."""

import numpy as np
import pytest

from advjax import plots


def test_comparison_grid_writes_one_row_pair_per_attack(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((4, 8, 8, 1)).astype(np.float32)
    y = np.arange(4)
    rows = [("PGD", np.clip(x + 0.1, 0, 1), y[::-1]), ("sample", x, y)]
    path = plots.comparison_grid(str(tmp_path / "grid.png"), x, y, y, rows, eps=0.1, title="t")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg
    h, w = mpimg.imread(path).shape[:2]
    assert h > w  # 5 rows of 4 images: taller than wide


def test_accuracy_vs_eps_writes_png(tmp_path):
    path = plots.accuracy_vs_eps(str(tmp_path / "acc.png"), {"a": [0.9, 0.5, 0.1]},
                                 [0.0, 0.1, 0.2], train_eps=0.1)
    with open(path, "rb") as f:
        assert f.read(4) == b"\x89PNG"


def test_comparison_grid_rejects_mismatched_rows(tmp_path):
    x = np.zeros((3, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match=r"rows\[0\] \('short'\)"):
        plots.comparison_grid(str(tmp_path / "g.png"), x, np.arange(3), np.arange(3),
                              [("short", x[:2], np.arange(2))], eps=0.1)
