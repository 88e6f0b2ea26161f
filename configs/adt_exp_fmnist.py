"""ADT_EXP (Sec. 3.1) on Fashion-MNIST: per-example tanh-Gaussians, Adam lr 0.3 (b1 = b2 = 0 as the
released adt_exp.py), T = 7, k = 5, lam = 0.01 (the paper's settings).

One of the five ADT Table-1 configs; the shared protocol and evaluation columns are described in
`advjax.config.adt_fmnist_base`.

    advjax train --config configs/adt_exp_fmnist.py --workdir workdirs/adt_exp_fmnist
"""

from advjax.config import adt_fmnist_base

EPS = 0.1


def get_config():
    c = adt_fmnist_base(EPS)
    c.objective.name = "adt_exp"
    c.objective.eps = EPS
    c.objective.steps = 7
    c.objective.samples = 5
    c.objective.lr = 0.3
    c.objective.lam = 0.01
    return c
