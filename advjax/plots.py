"""Pictures people look at: adversarial example grids and robust accuracy against eps (matplotlib, Agg)."""

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
