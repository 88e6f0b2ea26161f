"""AWP-AT (Wu et al. 2020) on Fashion-MNIST: PGD-10 (step eps / 4) at the weights w, one normalized
ascent step on the kernels, ||v_l|| = gamma ||w_l|| with gamma = 0.01 (the authors' value), and the CE
gradient at w + v applied to w. No AWP warm-up. The baseline of udr_awp_fmnist.

linf eps = 0.1. The studies' protocol (see `advjax.config.dro_fmnist_base`).

    advjax train --config configs/awp_fmnist.py --workdir workdirs/awp_fmnist
"""

from advjax.config import dro_fmnist_base

EPS = 0.1
STEP = EPS / 4


def get_config():
    c = dro_fmnist_base(EPS)
    c.objective.name = "awp"
    c.objective.eps = EPS
    c.objective.step_size = STEP
    c.objective.steps = 10
    c.objective.gamma = 0.01
    return c
