"""CCE-RM (thesis Ch. 4, Sec. 4.3, Eq. 5; l_pm = l_dm = 1) of a 2-member ensemble of small CNN-4C3Fs
on Fashion-MNIST; the evaluated model is the ensemble (log of the mean member probability).
Needs "ensemble" in advjax.models.MODELS (advjax/models/ensemble.py.Ensemble); CCE's paper uses Adam
lr 1e-3, here the shared SGD schedule keeps the comparison with the single-model configs.

    advjax train --config configs/cce_rm_fmnist.py --workdir workdirs/cce_rm_fmnist
"""

from advjax.config import cce_fmnist_base


def get_config():
    c = cce_fmnist_base()
    c.objective.variant = "rm"
    return c
