"""The robust-optimization paper's baseline (Shaham et al. 2018, Sec. 5.1): the MNIST baseline net
trained on clean data, on Fashion-MNIST with the study's shared setting
(`advjax.config.ro_fmnist_base`). Its one-step adversarial examples are the study's transfer set
(the paper's A_mnist, Table 1).

    advjax train --config configs/ro_standard_fmnist.py --workdir workdirs/ro_standard_fmnist
"""

from advjax.config import ro_fmnist_base


def get_config():
    c = ro_fmnist_base()
    c.objective.name = "standard"
    return c
