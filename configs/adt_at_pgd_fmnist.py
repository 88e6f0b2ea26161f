"""AT_PGD (Madry et al.; the Table-1 baseline) on Fashion-MNIST: PGD-10 with step eps / 4
and a random start.

One of the five ADT Table-1 configs; the shared protocol and evaluation columns are described in
`advjax.config.adt_fmnist_base`.

    advjax train --config configs/adt_at_pgd_fmnist.py --workdir workdirs/adt_at_pgd_fmnist
"""

from advjax.config import adt_fmnist_base

EPS = 0.1
STEP = EPS / 4


def get_config():
    c = adt_fmnist_base(EPS)
    c.objective.name = "pgd_at"
    c.objective.eps = EPS
    c.objective.step_size = STEP
    c.objective.steps = 10
    c.objective.random_start = True
    return c
