"""ADR-TRADES as the thesis defines it (Ch. 3, Secs. 3.4, 4.2, Eq. 7): the TRADES adversary and L_c
= CE(h(x_a), y) + CE(h(x), y) (Eq. 4), plus the ADR terms l_lc = l_gb = l_smt = 1, l_conf = 0, on
Fashion-MNIST with the thesis' MNIST network and optimizer (`advjax.config.adr_fmnist_base`).
`--config.objective.variant=release` gives the PyTorch release's L_c = CE(x) + 1 KL(h(x) || h(x_a)).
Baseline: adr_baseline_trades_fmnist (TRADES, beta = 1).

    advjax train --config configs/adr_trades_fmnist.py --workdir workdirs/adr_trades_fmnist
"""

from advjax.config import adr_fmnist_base


def get_config():
    c = adr_fmnist_base("adr_trades")
    c.objective.variant = "thesis"
    return c
