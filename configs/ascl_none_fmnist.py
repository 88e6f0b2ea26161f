"""ADR-None under the ASCL protocol: L_AT = CE(h(x), y) + CE(h(x_a), y) (ASCL Eq. 4 = ADR Eq. 4),
x_a by PGD on CE, no contrastive or VAT term, with ASCL's Adam 1e-3
(`advjax.config.ascl_fmnist_base`). The matched baseline of every ascl_*_fmnist config (they differ
from it in l_SCL and l_VAT only).

    advjax train --config configs/ascl_none_fmnist.py --workdir workdirs/ascl_none_fmnist
"""

from advjax.config import ascl_fmnist_base


def get_config():
    return ascl_fmnist_base("none")
