"""A TA-MOO victim (thesis Ch. 4, Sec. 4 "General settings": the attacks are evaluated on models
adversarially trained "with PGD-AT (Madry et al., 2018) to robustify the models"): PGD-AT (mix = 1)
at linf eps 0.1 on Fashion-MNIST, PGD k = 10 steps of eps / 4 with a random start (the thesis' victims:
20 steps of eps / 4), the thesis' MNIST network (`advjax.config.thesis_fmnist_base`), SGD 0.01
momentum 0.9 (the rate of the no-batch-norm MNIST CNNs; the thesis' 0.1 is for its batch-norm ResNets)
with its weight decay 5e-4 and cosine schedule. experiments/thesis_fmnist trains four architectures
with this config (model overrides) for ENS and attacks the CNN alone for UNI and EoT.

    advjax train --config configs/tamoo_victim_fmnist.py --workdir workdirs/tamoo_victim_fmnist
"""

from advjax.config import thesis_fmnist_base

EPS = 0.1


def get_config():
    c = thesis_fmnist_base(EPS)
    c.objective.name = "pgd_at"
    c.objective.step_size = EPS / 4
    c.objective.steps = 10
    c.objective.random_start = True
    c.optim.name = "sgd"
    c.optim.lr = 0.01
    c.optim.momentum = 0.9
    c.optim.weight_decay = 5e-4
    c.optim.schedule = "cosine"
    c.train.epochs = 20
    return c
