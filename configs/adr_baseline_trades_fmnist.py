"""TRADES (Zhang et al. 2019, Eq. 5) with beta = 1 (their MNIST value, and the ADR release's
`trades_beta`) under the ADR protocol (`advjax.config.adr_fmnist_base`: the thesis' MNIST network,
adversary budget k = 20 steps of 0.01, SGD 0.01): the baseline ADR-TRADES improves on (thesis Ch. 3,
Sec. 4.2, "TRADES 93.64% -> ADR-TRADES 95.71%" on MNIST).

    advjax train --config configs/adr_baseline_trades_fmnist.py --workdir workdirs/adr_baseline_trades
"""

from advjax.config import adr_fmnist_base


def get_config():
    c = adr_fmnist_base("trades")
    c.objective.beta = 1.0
    return c
