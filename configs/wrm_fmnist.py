"""WRM = DRA_2 (Sinha et al. 2018; DRA Eq. 5 with c = ||x - x'||_2^2, Algorithm 1) on Fashion-MNIST.

The Lagrangian attack as DRA Sec. 4 runs it (`variant="dra"`): 15 Adam ascent steps on CE - gamma
||x' - x||_2^2, no ball, in the box; learning rate 0.01 (DRA: 0.001 on CIFAR-10, where 15 steps of
0.001 cannot reach this study's eps = 0.1 scale). gamma: DRA "chose [the gammas] to match the maximum
attack distortion" of the point-wise attacks; the dro_fmnist study calibrates it so that the training
attack's mean linf distortion is the point-wise methods' eps = 0.1 (`experiments/dro_fmnist/
calibrate_gamma.py`; 0.3 under the former SGD 0.05 protocol, the value here until recalibrated).
`--config.objective.variant=sinha_code` trains as Sinha et al.'s release instead (their ascent
schedule, no box, 0.1-smoothed labels; their MNIST gamma = 0.5 / 1.3 = 0.385).

linf eps = 0.1 (the point-wise baselines'). The studies' protocol (see `advjax.config.dro_fmnist_base`;
Sinha et al.'s own MNIST optimizer was Adam 1e-3, batch 256, 25 epochs, ELU; DRA does not state its
classifier's optimizer, so the study keeps the point-wise baselines' SGD 0.01 to stay matched).

    advjax train --config configs/wrm_fmnist.py --workdir workdirs/wrm_fmnist
"""

from advjax.config import dro_fmnist_base

EPS = 0.1
GAMMA = 0.3


def get_config():
    c = dro_fmnist_base(EPS)
    c.objective.name = "wrm"
    c.objective.gamma = GAMMA
    c.objective.step_size = 0.01
    c.objective.steps = 15
    c.objective.cost = "l2"
    c.objective.ascent = "adam"
    c.objective.variant = "dra"
    return c
