"""ADT_EXP-AM (Sec. 3.2) on Fashion-MNIST: a residual generator of (mu, sigma), k = 1, lam = 0.01,
trained jointly with the classifier, as the released adt_expam.py: its inputs [x, raw gradients of
the batch-mean CE at x and at the FGSM point], its generator's block structure (w, 2w, 2w, w;
N(0, 0.02) init) and optimizer (Adam 2e-4, b1 0.5) (`variant="code"`). Cut: base width w = 32
instead of the release's 256 (compute).

One of the five ADT Table-1 configs; the shared protocol and evaluation columns are described in
`advjax.config.adt_fmnist_base`.

    advjax train --config configs/adt_exp_am_fmnist.py --workdir workdirs/adt_exp_am_fmnist
"""

from advjax.config import adt_am_generator, adt_fmnist_base

EPS = 0.1


def get_config():
    c = adt_am_generator(adt_fmnist_base(EPS), EPS)
    c.objective.name = "adt_exp_am"
    c.objective.lam = 0.01
    return c
