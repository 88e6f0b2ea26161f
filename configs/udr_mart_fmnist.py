"""UDR-MART (thesis Ch. 5, Sec. 3, Eq. 7 and Algorithm 1) on Fashion-MNIST:
L = BCE(h(x^a)) + beta (1 - h(x)_y) KL(h(x) || h(x^a)), beta = 5 (the chapter's MART value), from
MART's start x + 0.001 N(0, I). BCE on the adversarial input (`bce_input="adversarial"`, Wang et
al.'s MART) so that the training loss is the baseline mart_fmnist's (the adversaries differ: MART's
maximizes CE, UDR's its risk g, as Algorithm 1 defines it); the chapter's own UDR-MART puts BCE on
the natural input (its footnote 2): `--config.objective.bce_input=natural`.

UDR hyperparameters (`advjax.config.udr_pgd_adversary`): the adversary takes the baseline's budget
(10 steps of eta = eps / 4) with the authors' code's soft ball: per-pixel linf pull, tau = eta,
lambda_0 = 1, and their lambda schedule (`lambda_schedule="code"`): Eq. (19) on the mean absolute
pixel perturbation every 10 steps with eta_lambda = 0.02 (about 0.002 per step) and no clamp.
With lambda_0 = 1 and tau = eta the pull starts as exact hard clipping (kappa = 1): UDR departs
from its baseline as lambda decreases; the study logs lambda and the adversary's mean linf / l2
norms and trains until lambda settles.

linf eps = 0.1. The studies' protocol (see `advjax.config.dro_fmnist_base`).

    advjax train --config configs/udr_mart_fmnist.py --workdir workdirs/udr_mart_fmnist
"""

from advjax.config import dro_fmnist_base, udr_pgd_adversary

EPS = 0.1


def get_config():
    c = udr_pgd_adversary(dro_fmnist_base(EPS), EPS)
    c.objective.name = "udr_mart"
    c.objective.beta = 5.0
    c.objective.bce_input = "adversarial"
    c.objective.start = "trades"
    return c
