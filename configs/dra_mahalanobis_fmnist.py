"""DRA_A, the adaptive Mahalanobis cost (DRA Algorithm 3, Theorem 2) on Fashion-MNIST.

c_A = (x - x')^T A (x - x') with A 784 x 784, A = I in the first epoch (so epoch 1 is wrm_fmnist), then
recomputed after every epoch from the epoch's perturbation scatter by Theorem 2 with r = 2 (DRA Sec. 4)
and the eigenvalue floor psi_floor = 1e-6 (not in the paper: it caps cond(A) at 100; in the former
study it bound from the first update, so dro_fmnist also trains psi_floor 1e-9 (cond <= 1000) and 0,
the paper's unfloored Theorem 2). gamma as wrm_fmnist (the study passes its calibrated value). The
logged A_eig_min / A_eig_max / A_cond show A's spectrum.

linf eps = 0.1. The studies' protocol (see `advjax.config.dro_fmnist_base`).

    advjax train --config configs/dra_mahalanobis_fmnist.py --workdir workdirs/dra_mahalanobis_fmnist
"""

from advjax.config import dro_fmnist_base

EPS = 0.1


def get_config():
    c = dro_fmnist_base(EPS)
    c.objective.name = "dra_mahalanobis"
    c.objective.gamma = 0.3
    c.objective.step_size = 0.01
    c.objective.steps = 15
    c.objective.ascent = "adam"
    c.objective.input_dim = 28 * 28 * 1
    c.objective.r = 2.0
    c.objective.psi_floor = 1e-6
    return c
