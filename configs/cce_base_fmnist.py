"""CCE-Base (thesis Ch. 4, Sec. 4.3; l_pm = l_dm = 0: independent PGD-AT of each member with CE(x) +
CE(x_a^n), x_a^n against member n alone) of a 2-member ensemble on Fashion-MNIST, the thesis' MNIST
member and Adam 1e-3 (`advjax.config.cce_fmnist_base`). `--config.objective.variant=release`
computes the crossing terms as the released code. Baseline: adv_en_fmnist (ADV-EN_2, the thesis'
ensemble baseline).

    advjax train --config configs/cce_base_fmnist.py --workdir workdirs/cce_base_fmnist
"""

from advjax.config import cce_fmnist_base


def get_config():
    c = cce_fmnist_base("cce")
    c.objective.mode = "base"
    c.objective.variant = "thesis"
    return c
