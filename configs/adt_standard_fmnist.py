"""Standard training (the Table-1 "Standard" row) on Fashion-MNIST.

One of the five ADT Table-1 configs; the shared protocol and evaluation columns are described in
`advjax.config.adt_fmnist_base`.

    advjax train --config configs/adt_standard_fmnist.py --workdir workdirs/adt_standard_fmnist
"""

from advjax.config import adt_fmnist_base

EPS = 0.1


def get_config():
    c = adt_fmnist_base(EPS)
    c.objective.name = "standard"
    return c
