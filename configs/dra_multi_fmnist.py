"""DRA_{2-inf}, the multi-cost ensemble (DRA Algorithm 2) on Fashion-MNIST.

Each step draws nu ~ U[0, 1] (one draw for the global batch, from a key in the method state): nu < p
uses the l2 Lagrangian attack with gamma_2, else the linf one with gamma_inf; p = 0.5 as in DRA Sec. 4.
gamma_2 and gamma_inf as wrm_fmnist and dra_inf_fmnist (the study passes its calibrated values);
the logged "cost_is_l2" shows the draws.

linf eps = 0.1. The studies' protocol (see `advjax.config.dro_fmnist_base`).

    advjax train --config configs/dra_multi_fmnist.py --workdir workdirs/dra_multi_fmnist
"""

from advjax.config import dro_fmnist_base

EPS = 0.1


def get_config():
    c = dro_fmnist_base(EPS)
    c.objective.name = "dra_multi"
    c.objective.gamma_2 = 0.3
    c.objective.gamma_inf = 1.0
    c.objective.p = 0.5
    c.objective.step_size = 0.01
    c.objective.steps = 15
    c.objective.ascent = "adam"
    return c
