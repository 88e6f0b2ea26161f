"""Standard training (the Table-1 "Standard" row) on Fashion-MNIST.

ADT Table-1 protocol on Fashion-MNIST (one of five configs: adt_standard_fmnist, adt_at_pgd_fmnist,
adt_exp_fmnist, adt_exp_am_fmnist, adt_imp_am_fmnist; identical data, model, optimizer, schedule and
evaluation, only the objective differs). linf eps = 0.1; the evaluation columns are the paper's
(Sec. 5.1): FGSM, PGD-20, PGD-100, MIM-20, C&W (margin loss by PGD, 30 steps), all with step size
eps / 4 and, as in the authors' evaluation code, a uniform random start; plus the EXP attack (Sec. 5.3,
T = 20, k = 10). A_rob (Eq. 12) is the per-example worst case over these columns.

    advjax train --config configs/adt_standard_fmnist.py --workdir workdirs/adt_standard_fmnist
"""

from advjax.config import adt_fmnist_base

EPS = 0.1


def get_config():
    c = adt_fmnist_base(EPS)
    c.objective.name = "standard"
    return c
