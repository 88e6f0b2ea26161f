"""ADR-TRADES (thesis Ch. 3, Sec. 3.4, Eq. 7; L_c = CE(x) + beta KL(h(x) || h(x_a)), the TRADES
adversary) on Fashion-MNIST, beta = 6, ADR weights l_lc = l_gb = l_smt = 1, l_conf = 0. Baseline: trades.

    advjax train --config configs/adr_trades_fmnist.py --workdir workdirs/adr_trades_fmnist
"""

from advjax.config import adr_fmnist_base


def get_config():
    c = adr_fmnist_base("adr_trades")
    c.objective.beta = 6.0
    return c
