"""MART (Wang et al. 2020, Eq. 11), CE attack of 10 steps of eps / 4 from x + 0.001 N(0, I), beta = 5
(the UDR chapter's MART value): the point-wise baseline of UDR-MART (dro_fmnist; same beta, start,
budget and BCE on the adversarial input) and of the thesis study on Fashion-MNIST.

The studies' shared protocol (`advjax.config.fmnist_small_cnn_protocol`: all 60k / 10k images,
CNN-4C3F 16/32/128, SGD 0.01 momentum 0.9, x0.1 at 55/75/90 % of the epochs). linf eps = 0.1. The
eval attacks are those of `advjax.config.dro_fmnist_base`.

    advjax train --config configs/mart_fmnist.py --workdir workdirs/mart_fmnist
"""

from advjax.config import dro_fmnist_base

EPS = 0.1


def get_config():
    c = dro_fmnist_base(EPS)
    c.objective.name = "mart"
    c.objective.eps = EPS
    c.objective.step_size = EPS / 4
    c.objective.steps = 10
    c.objective.beta = 5.0
    return c
