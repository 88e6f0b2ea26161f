"""CCE-Base (thesis Ch. 4, Sec. 4.3; l_pm = l_dm = 0: independent PGD-AT of each member with
CE(x) + CE(x_a)) of a 2-member ensemble of small CNN-4C3Fs on Fashion-MNIST; the baseline of cce_rm.
Needs "ensemble" in advjax.models.MODELS.

    advjax train --config configs/cce_base_fmnist.py --workdir workdirs/cce_base_fmnist
"""

from advjax.config import cce_fmnist_base


def get_config():
    c = cce_fmnist_base()
    c.objective.variant = "base"
    return c
