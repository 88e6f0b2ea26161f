"""TRADES (Zhang et al. 2019, Eq. 5), beta = 6, KL attack of 10 steps of eps / 4 from x + 0.001 N(0, I):
the point-wise baseline of UDR-TRADES (dro_fmnist; same beta, start and budget) and of the thesis
study (thesis_fmnist) on Fashion-MNIST.

The studies' shared protocol (`advjax.config.fmnist_small_cnn_protocol`: all 60k / 10k images,
CNN-4C3F 16/32/128, SGD 0.01 momentum 0.9, x0.1 at 55/75/90 % of the epochs, TRADES' MNIST
optimizer). linf eps = 0.1. The eval attacks are those of `advjax.config.dro_fmnist_base`.

    advjax train --config configs/trades_fmnist.py --workdir workdirs/trades_fmnist
"""

from advjax.config import dro_fmnist_base

EPS = 0.1


def get_config():
    c = dro_fmnist_base(EPS)
    c.objective.name = "trades"
    c.objective.eps = EPS
    c.objective.step_size = EPS / 4
    c.objective.steps = 10
    c.objective.beta = 6.0
    return c
