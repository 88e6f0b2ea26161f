"""AT_PGD (Madry et al.; the Table-1 baseline) on Fashion-MNIST: PGD-10 with step eps / 4
and a random start.

ADT Table-1 protocol on Fashion-MNIST (one of five configs: adt_standard_fmnist, adt_at_pgd_fmnist,
adt_exp_fmnist, adt_exp_am_fmnist, adt_imp_am_fmnist; identical data, model, optimizer, schedule and
evaluation, only the objective differs). linf eps = 0.1; the evaluation columns are the paper's
(Sec. 5.1): FGSM, PGD-20, PGD-100, MIM-20, C&W (margin loss by PGD, 30 steps), all with step size
eps / 4 and, as in the authors' evaluation code, a uniform random start; plus the EXP attack (Sec. 5.3,
T = 20, k = 10). A_rob (Eq. 12) is the per-example worst case over these columns.

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
