"""PGD-AT (Madry et al. 2018) at the RO linf radius (0.07): PGD-10, step eps / 4, random start, on the
adversarial examples only, in the RO study's shared setting (`advjax.config.ro_fmnist_base`): the
multi-step counterpart of RO-linf's single step.

    advjax train --config configs/ro_pgd_at_fmnist.py --workdir workdirs/ro_pgd_at_fmnist
"""

from advjax.config import RO_LINF_EPS, ro_fmnist_base


def get_config():
    c = ro_fmnist_base()
    c.objective.name = "pgd_at"
    c.objective.eps = RO_LINF_EPS
    c.objective.step_size = RO_LINF_EPS / 4
    c.objective.steps = 10
    c.objective.random_start = True
    return c
