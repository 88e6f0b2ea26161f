"""Pictures: adversarial example grids and robust accuracy against eps (matplotlib, Agg)."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _show(ax, img, cmap=None, vmin=0.0, vmax=1.0):
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
        cmap = cmap or "gray"
    ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def adversarial_grid(path: str, x: np.ndarray, x_adv: np.ndarray, y: np.ndarray,
                     pred_clean: np.ndarray, pred_adv: np.ndarray, *,
                     class_names: Optional[Sequence[str]] = None, title: str = "") -> str:
    """Saves a 3-row grid: clean images, adversarial images, and perturbations x_adv - x.

    Titles give the true label and the predictions (red when wrong). Perturbations are shown on a
    diverging colour map scaled to the largest |delta| in the grid (its value is printed), so small
    linf perturbations stay visible.
    """
    plt = _plt()
    n = len(x)
    name = (lambda k: class_names[int(k)]) if class_names else (lambda k: str(int(k)))
    delta = np.asarray(x_adv, np.float32) - np.asarray(x, np.float32)
    scale = float(np.abs(delta).max()) or 1.0
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n + 1.2, 5.4), squeeze=False)
    for i in range(n):
        _show(axes[0, i], x[i])
        axes[0, i].set_title(f"y={name(y[i])}\npred {name(pred_clean[i])}", fontsize=8,
                             color="black" if pred_clean[i] == y[i] else "red")
        _show(axes[1, i], x_adv[i])
        axes[1, i].set_title(f"pred {name(pred_adv[i])}", fontsize=8,
                             color="black" if pred_adv[i] == y[i] else "red")
        d = delta[i].mean(axis=-1) if delta[i].ndim == 3 else delta[i]
        _show(axes[2, i], d, cmap="seismic", vmin=-scale, vmax=scale)
    for r, label in enumerate(["clean", "adversarial", f"x_adv - x\n(|max| {scale:.3f})"]):
        axes[r, 0].set_ylabel(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def comparison_grid(path: str, x: np.ndarray, y: np.ndarray, pred_clean: np.ndarray,
                    rows: Sequence[tuple], *, eps: float, title: str = "") -> str:
    """Saves clean images above several attacks' results on the same images (e.g. PGD's example next
    to samples of a learned adversarial distribution): for each (name, x_adv, pred) of `rows`, a row
    of adversarial images (predictions in red when wrong) and a row of perturbations x_adv - x on a
    diverging colour map fixed to [-eps, eps], so that rows compare at one scale.
    """
    n = len(x)
    for r, (name, x_adv, pred) in enumerate(rows):
        if len(x_adv) != n or len(pred) != n:
            raise ValueError(f"rows[{r}] ({name!r}): {len(x_adv)} images and {len(pred)} "
                             f"predictions, expected {n} (one per image of x)")
    plt = _plt()
    num_rows = 1 + 2 * len(rows)
    fig, axes = plt.subplots(num_rows, n, figsize=(1.4 * n + 1.2, 1.45 * num_rows), squeeze=False)
    for i in range(n):
        _show(axes[0, i], x[i])
        axes[0, i].set_title(f"y={int(y[i])}, pred {int(pred_clean[i])}", fontsize=7,
                             color="black" if pred_clean[i] == y[i] else "red")
        for r, (_, x_adv, pred) in enumerate(rows):
            _show(axes[1 + 2 * r, i], x_adv[i])
            axes[1 + 2 * r, i].set_title(f"pred {int(pred[i])}", fontsize=7,
                                         color="black" if pred[i] == y[i] else "red")
            d = np.asarray(x_adv[i], np.float32) - np.asarray(x[i], np.float32)
            _show(axes[2 + 2 * r, i], d.mean(axis=-1) if d.ndim == 3 else d, cmap="RdBu",
                  vmin=-eps, vmax=eps)
    axes[0, 0].set_ylabel("clean", fontsize=8)
    for r, (name, _, _) in enumerate(rows):
        axes[1 + 2 * r, 0].set_ylabel(name, fontsize=8)
        axes[2 + 2 * r, 0].set_ylabel("x_adv - x", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy_vs_eps(path: str, curves: Dict[str, Sequence[float]], eps: Sequence[float], *,
                    train_eps: Optional[float] = None, title: str = "",
                    xlabel: str = "attack eps") -> str:
    """Saves robust accuracy (%) against attack eps, one line per method or attack."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, acc in curves.items():
        ax.plot(eps, 100 * np.asarray(acc), marker="o", label=label)
    if train_eps is not None:
        ax.axvline(train_eps, color="gray", linestyle="--", linewidth=1, label="training eps")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
