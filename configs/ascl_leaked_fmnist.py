"""Leaked-ASCL (thesis Ch. 3, Table 1: Leaked-LS positives and Soft-LS negatives) on Fashion-MNIST:
L_AT + 1 * L_SCL + 2 * L_VAT, tau = 0.07. Logs n_pos / n_neg (expected to change over training) and
r_div (expected below PGD-AT's).

    advjax train --config configs/ascl_leaked_fmnist.py --workdir workdirs/ascl_leaked_fmnist
"""

from advjax.config import ascl_fmnist_base


def get_config():
    c = ascl_fmnist_base()
    c.objective.selection = "leaked_ls"
    return c
