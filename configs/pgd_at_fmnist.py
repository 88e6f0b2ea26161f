"""PGD-AT (Madry et al. 2018), training on PGD-10 examples only (mix = 1): the point-wise baseline of
the WRM/DRA rows of the distributional-robustness study (dro_fmnist; DRA's baselines train on
adversarial examples only) and of the thesis study (thesis_fmnist) on Fashion-MNIST.

The studies' shared protocol (`advjax.config.fmnist_small_cnn_protocol`: all 60k / 10k images,
CNN-4C3F 16/32/128, SGD 0.01 momentum 0.9, x0.1 at 55/75/90 % of the epochs: TRADES' and UDR's
MNIST optimizer) and training adversary (linf eps = 0.1, 10 steps of eps / 4). The eval attacks are
those of `advjax.config.dro_fmnist_base`. UDR-PGD's matched baseline is udr_pgd_hardball_fmnist.

    advjax train --config configs/pgd_at_fmnist.py --workdir workdirs/pgd_at_fmnist
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
    return c
