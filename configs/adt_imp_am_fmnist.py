"""ADT_IMP-AM (Sec. 3.3) on Fashion-MNIST as the released adt_impam.py (`variant="code"`): an implicit
generator delta = eps tanh(G([x, raw gradients], z)) with a 64-d noise vector z ~ U(-1, 1)^64
embedded by an MLP, the entropy by the variational lower bound with a conv encoder q(z | delta)
(base width 32, Adam 2e-4), lam = 1 on the released hinge -relu(-E log q - 0.9). Cut: generator
base width 32 instead of 256 (compute). `variant="paper"` gives per-pixel noise, lam = 0.01 on
the bound, and an encoder that also sees x.

One of the five ADT Table-1 configs; the shared protocol and evaluation columns are described in
`advjax.config.adt_fmnist_base`.

    advjax train --config configs/adt_imp_am_fmnist.py --workdir workdirs/adt_imp_am_fmnist
"""

from advjax.config import adt_am_generator, adt_fmnist_base

EPS = 0.1


def get_config():
    c = adt_am_generator(adt_fmnist_base(EPS), EPS)
    c.objective.name = "adt_imp_am"
    c.objective.lam = 1.0
    c.objective.z_dim = 64
    c.objective.entropy_hinge = 0.9
    c.objective.encoder_width = 32
    return c
