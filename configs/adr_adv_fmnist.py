"""ADR-ADV (thesis Ch. 3, Eq. 7; L_c of Eq. 4 = CE(x_a) + CE(x), x_a by PGD on CE) on Fashion-MNIST,
with the supplement's MNIST weights l_lc = l_gb = l_smt = 1, l_conf = 0 and alpha = 0.99 (Eq. 2),
the thesis' MNIST network and optimizer (`advjax.config.adr_fmnist_base`). Baseline:
adr_none_fmnist.

    advjax train --config configs/adr_adv_fmnist.py --workdir workdirs/adr_adv_fmnist
"""

from advjax.config import adr_fmnist_base


def get_config():
    return adr_fmnist_base("adr_adv")
