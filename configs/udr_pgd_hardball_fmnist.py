"""PGD-AT with the thesis' Eq. (5) loss, CE(h(x)) + beta CE(h(x_pgd)), beta = 1: UDR-PGD's hard-ball
limit (Theorem 1), the baseline matched to udr_pgd_fmnist in everything but the soft ball (same
loss, same PGD-10 budget and uniform start, same optimizer and data order).

linf eps = 0.1 (the studies' protocol, `advjax.config.dro_fmnist_base`). The dro_fmnist study also
trains it at the UDR adversary's effective radius (the control of UDR's "beyond eps" claim).

    advjax train --config configs/udr_pgd_hardball_fmnist.py --workdir workdirs/udr_pgd_hardball
"""

from advjax.config import dro_fmnist_base

EPS = 0.1


def get_config():
    c = dro_fmnist_base(EPS)
    c.objective.name = "pgd_at"
    c.objective.eps = EPS
    c.objective.step_size = EPS / 4
    c.objective.steps = 10
    c.objective.random_start = True
    c.objective.beta = 1.0
    return c
