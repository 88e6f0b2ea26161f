"""ADT_IMP-AM (Sec. 3.3) on Fashion-MNIST: an implicit generator delta = eps tanh(G(x, z)), z ~ U(-1, 1)
noise channels, entropy by the variational lower bound with an encoder q(z | delta, x), lam = 0.01.

One of the five ADT Table-1 configs; the shared protocol and evaluation columns are described in
`advjax.config.adt_fmnist_base`.

    advjax train --config configs/adt_imp_am_fmnist.py --workdir workdirs/adt_imp_am_fmnist
"""

from advjax.config import adt_am_generator, adt_fmnist_base

EPS = 0.1


def get_config():
    c = adt_am_generator(adt_fmnist_base(EPS), EPS)
    c.objective.name = "adt_imp_am"
    c.objective.z_channels = 1
    c.objective.encoder_width = 16
    c.objective.encoder_blocks = 2
    return c
