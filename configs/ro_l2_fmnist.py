"""Robust optimization, l2 uncertainty set (Shaham et al. 2018, Alg. 1, Sec. 4.1 / 5.1) on
Fashion-MNIST: one steepest-ascent step in the l2 (eps grad / ||grad||_2; the released intensity 2 std = 0.7),
then a descent step on the perturbed batch only.

The study's shared setting (`advjax.config.ro_fmnist_base`): the paper's MNIST baseline net
(`ro_cnn`), the released scripts' SGD 0.01, momentum 0.9, L2 1e-3, batch 100, all 60k / 10k images.
Radii: the release perturbs standardized pixels; in [0, 1] units that is its intensity times
Fashion-MNIST's std 0.353. The perturbed input is clipped to the image box [0, 1] as every
baseline's (`box=True`); the release does not clip (`--config.objective.box=False`).

    advjax train --config configs/ro_l2_fmnist.py --workdir workdirs/ro_l2_fmnist
"""

from advjax.config import RO_L2_EPS, ro_fmnist_base


def get_config():
    c = ro_fmnist_base()
    c.objective.name = "ro"
    c.objective.eps = RO_L2_EPS
    c.objective.norm = "l2"
    c.objective.l1_k = 1
    c.objective.box = True
    return c
