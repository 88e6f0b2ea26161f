"""ADT_IMP-AM (Sec. 3.3) on Fashion-MNIST: an implicit generator delta = eps tanh(G(x, z)), z ~ U(-1, 1)
noise channels, entropy by the variational lower bound with an encoder q(z | delta, x), lam = 0.01.

ADT Table-1 protocol on Fashion-MNIST (one of five configs: adt_standard_fmnist, adt_at_pgd_fmnist,
adt_exp_fmnist, adt_exp_am_fmnist, adt_imp_am_fmnist; identical data, model, optimizer, schedule and
evaluation, only the objective differs). linf eps = 0.1; the evaluation columns are the paper's
(Sec. 5.1): FGSM, PGD-20, PGD-100, MIM-20, C&W (margin loss by PGD, 30 steps), all with step size
eps / 4 and, as in the authors' evaluation code, a uniform random start; plus the EXP attack (Sec. 5.3,
T = 20, k = 10). A_rob (Eq. 12) is the per-example worst case over these columns.

    advjax train --config configs/adt_imp_am_fmnist.py --workdir workdirs/adt_imp_am_fmnist
"""

from advjax.config import adt_am_generator, adt_fmnist_base

EPS = 0.1


def get_config():
    c = adt_am_generator(adt_fmnist_base(EPS), EPS)
    c.objective.name = "adt_imp_am"
    c.objective.z_channels = 1
    c.objective.encoder_width = 16
    c.objective.encoder_blocks = 2
    return c
