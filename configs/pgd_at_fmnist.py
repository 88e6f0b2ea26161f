"""PGD-AT (Madry et al. 2018), training on PGD-10 examples only (mix = 1): the point-wise baseline of the
distributional-robustness (dro_fmnist) and thesis (thesis_fmnist) studies on Fashion-MNIST.

The studies' shared protocol (`advjax.config.fmnist_small_cnn_protocol`: CNN-4C3F 16/32/128, SGD 0.05
cosine) and training adversary (linf eps = 0.1, 10 steps of eps / 4), the budget of the UDR, WRM/DRA,
ADR, ASCL and CCE configs. The eval attacks are those of `advjax.config.dro_fmnist_base`.

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
