"""FGSM adversarial training (Goodfellow et al. 2015, Eq. 3; the RO paper's Eq. 3), alpha = 0.5, at the
RO linf radius (0.07): the baseline the RO paper calls a variant of its method, in the RO study's
shared setting (`advjax.config.ro_fmnist_base`). alpha = 0 would be RO-linf exactly.

    advjax train --config configs/ro_fgsm_at_fmnist.py --workdir workdirs/ro_fgsm_at_fmnist
"""

from advjax.config import RO_LINF_EPS, ro_fmnist_base


def get_config():
    c = ro_fmnist_base()
    c.objective.name = "fgsm_at"
    c.objective.eps = RO_LINF_EPS
    c.objective.alpha = 0.5
    return c
