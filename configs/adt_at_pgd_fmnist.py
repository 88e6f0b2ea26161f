"""AT_PGD (Madry et al.; the ADT Table-1 baseline) on Fashion-MNIST: PGD-10 with step eps / 4 and a
random start, trained on the adversarial examples only.

One of the five ADT Table-1 configs; the shared protocol (all 60k / 10k images, CNN-4C3F 16/32/128,
SGD 0.01 momentum 0.9 as the no-batch-norm MNIST authors use, weight decay 2e-4 as ADT's release)
and the evaluation columns are described in `advjax.config.adt_fmnist_base`.

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
