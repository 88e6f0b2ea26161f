"""DRA_inf (DRA Sec. 3.2 / 4: the Lagrangian attack with c = ||x - x'||_inf) on Fashion-MNIST.

Adam ascent as in wrm_fmnist (15 steps, lr 0.01). The linf subgradient pulls back only the largest
coordinate(s) each step, so gamma must exceed that pixel's |dCE/dx| to bind; gamma = 2 (DRA's ratio
gamma_inf / gamma_2 is 10 on CIFAR-10). Calibrate from the logged metrics as for wrm_fmnist.

linf eps = 0.1. One of the distributional-robustness configs (see `advjax.config.dro_fmnist_base`).

    advjax train --config configs/dra_inf_fmnist.py --workdir workdirs/dra_inf_fmnist
"""

from advjax.config import dro_fmnist_base

EPS = 0.1


def get_config():
    c = dro_fmnist_base(EPS)
    c.objective.name = "dra_inf"
    c.objective.gamma = 2.0
    c.objective.step_size = 0.01
    c.objective.steps = 15
    c.objective.ascent = "adam"
    return c
