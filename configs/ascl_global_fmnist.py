"""ASCL with Global selection (thesis Ch. 3, Sec. 3.4, Eq. 6, Table 1) on Fashion-MNIST:
L_AT + 1 * L_SCL + 2 * L_VAT, tau = 0.07, cosine similarity on the last conv block's features.

    advjax train --config configs/ascl_global_fmnist.py --workdir workdirs/ascl_global_fmnist
"""

from advjax.config import ascl_fmnist_base


def get_config():
    c = ascl_fmnist_base()
    c.objective.selection = "global"
    return c
