"""TRADES (Zhang et al. 2019, Eq. 5), beta = 6, KL attack of 10 steps: the point-wise baseline of the
distributional-robustness (dro_fmnist) and thesis (thesis_fmnist) studies on Fashion-MNIST.

The studies' shared protocol (`advjax.config.fmnist_small_cnn_protocol`: CNN-4C3F 16/32/128, SGD 0.05
cosine) and training adversary (linf eps = 0.1, 10 steps of eps / 4), the budget of the UDR, WRM/DRA,
ADR, ASCL and CCE configs. The eval attacks are those of `advjax.config.dro_fmnist_base`.

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
