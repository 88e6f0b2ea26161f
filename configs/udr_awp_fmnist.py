"""UDR-AWP-AT (thesis Ch. 5, Table 4, App. D) on Fashion-MNIST: the UDR adversary with the risk
CE(h(x'), y) and its lambda, then AWP (gamma = 0.01) on CE(f_{w+v}(x^a), y). Baseline: awp_fmnist.

UDR hyperparameters (`advjax.config.udr_pgd_adversary`): the adversary takes the baseline's budget
(10 steps of eta = eps / 4) with the authors' code's soft ball: per-pixel linf pull, tau = eta,
lambda_0 = 1, and their lambda schedule (`lambda_schedule="code"`): Eq. (19) on the mean absolute
pixel perturbation every 10 steps with eta_lambda = 0.02 (about 0.002 per step) and no clamp.
With lambda_0 = 1 and tau = eta the pull starts as exact hard clipping (kappa = 1): UDR departs
from its baseline as lambda decreases; the study logs lambda and the adversary's mean linf / l2
norms and trains until lambda settles.

linf eps = 0.1. The studies' protocol (see `advjax.config.dro_fmnist_base`).

    advjax train --config configs/udr_awp_fmnist.py --workdir workdirs/udr_awp_fmnist
"""

from advjax.config import dro_fmnist_base, udr_pgd_adversary

EPS = 0.1


def get_config():
    c = udr_pgd_adversary(dro_fmnist_base(EPS), EPS)
    c.objective.name = "udr_awp"
    c.objective.gamma = 0.01
    return c
