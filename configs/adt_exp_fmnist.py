"""ADT_EXP (Sec. 3.1) on Fashion-MNIST: per-example tanh-Gaussians, Adam lr 0.3, T = 7, k = 5,
lam = 0.01 (the paper's settings).

ADT Table-1 protocol on Fashion-MNIST (one of five configs: adt_standard_fmnist, adt_at_pgd_fmnist,
adt_exp_fmnist, adt_exp_am_fmnist, adt_imp_am_fmnist; identical data, model, optimizer, schedule and
evaluation, only the objective differs). linf eps = 0.1; the evaluation columns are the paper's
(Sec. 5.1): FGSM, PGD-20, PGD-100, MIM-20, C&W (margin loss by PGD, 30 steps), all with step size
eps / 4 and, as in the authors' evaluation code, a uniform random start; plus the EXP attack (Sec. 5.3,
T = 20, k = 10). A_rob (Eq. 12) is the per-example worst case over these columns.

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
