"""ADT_EXP-AM (Sec. 3.2) on Fashion-MNIST: a residual generator of (mu, sigma), k = 1, lam = 0.01,
Adam(2e-4, b1 = 0.5) as in the released code, trained jointly with the classifier.

One of the five ADT Table-1 configs; the shared protocol and evaluation columns are described in
`advjax.config.adt_fmnist_base`.

    advjax train --config configs/adt_exp_am_fmnist.py --workdir workdirs/adt_exp_am_fmnist
"""

from advjax.config import adt_am_generator, adt_fmnist_base

EPS = 0.1


def get_config():
    c = adt_am_generator(adt_fmnist_base(EPS), EPS)
    c.objective.name = "adt_exp_am"
    return c
