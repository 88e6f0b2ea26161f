"""ADR-None (thesis Ch. 3, Sec. 4.2, Table 1: "our base model without any additional components"): L
= CE(h(x_a), y) + CE(h(x), y) (Eq. 4), x_a by PGD on CE, all ADR weights 0. The matched baseline of
ADR-ADV (adr_adv_fmnist): the same network, adversary, optimizer and schedule
(`advjax.config.adr_fmnist_base`), only the regularizers differ.

    advjax train --config configs/adr_none_fmnist.py --workdir workdirs/adr_none_fmnist
"""

from advjax.config import adr_fmnist_base


def get_config():
    c = adr_fmnist_base("adr_adv")
    c.objective.lambda_lc = 0.0
    c.objective.lambda_gb = 0.0
    c.objective.lambda_conf = 0.0
    c.objective.lambda_smt = 0.0
    return c
