"""DRA_inf (DRA Sec. 3.2 / 4: the Lagrangian attack with c = ||x - x'||_inf) on Fashion-MNIST.

Adam ascent as wrm_fmnist (15 steps, lr 0.01). The linf subgradient pulls back only the largest
coordinate(s) each step, so gamma must exceed that pixel's |dCE/dx| to bind; the dro_fmnist study
calibrates gamma to a mean linf distortion of eps = 0.1 (1.0 under the former protocol, the value
here until recalibrated; 15 Adam steps of 0.01 move a pixel by at most 0.15, so it barely binds).

linf eps = 0.1. The studies' protocol (see `advjax.config.dro_fmnist_base`).

    advjax train --config configs/dra_inf_fmnist.py --workdir workdirs/dra_inf_fmnist
"""

from advjax.config import dro_fmnist_base

EPS = 0.1
GAMMA = 1.0


def get_config():
    c = dro_fmnist_base(EPS)
    c.objective.name = "dra_inf"
    c.objective.gamma = GAMMA
    c.objective.step_size = 0.01
    c.objective.steps = 15
    c.objective.ascent = "adam"
    return c
