"""DAA's Fashion-MNIST target (Zheng et al., AAAI 2019, Sec. 5 and Table 3): the DAA CNN (four 3x3
conv layers with batch norm, one dense layer; `advjax.models.DAACNN`) adversarially trained by PGD-AT
at linf eps = 0.2, the radius of the paper's Fashion-MNIST attacks.

The paper does not give its training schedule; here PGD-7 with step 2.5 eps / 7 and a random start
(Madry et al.'s step rule, 7 steps to fit a CPU), Adam 1e-3 with cosine decay, batch 128. The eval
columns are the quick PGD-20 check; the Table-3 evaluation (100-step attacks with restarts, CE and
CW, DAA-BLOB / DAA-DGF) is experiments/daa_fmnist/run.py.

    advjax train --config configs/daa_fmnist.py --workdir workdirs/daa_fmnist
"""

from advjax.config import default_config

EPS = 0.2


def get_config():
    c = default_config()
    c.data.name = "fashion_mnist"
    c.model.name = "daa_cnn"
    c.objective.name = "pgd_at"
    c.objective.eps = EPS
    c.objective.step_size = 2.5 * EPS / 7
    c.objective.steps = 7
    c.objective.random_start = True
    c.optim.name = "adam"
    c.optim.lr = 1e-3
    c.optim.momentum = 0.0
    c.optim.schedule = "cosine"
    c.train.epochs = 4
    c.train.batch_size = 128
    c.eval.batch_size = 500
    c.eval.attacks = [dict(name="pgd", label="pgd-20", eps=EPS, step_size=EPS / 4, steps=20)]
    return c
