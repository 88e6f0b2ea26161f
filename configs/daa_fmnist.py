"""The first DAA study's stand-in target (issue 4; experiments/daa_fmnist/standin/): the stand-in
`advjax.models.DAACNN` (four 3x3 conv layers with batch norm, one dense layer), PGD-AT at linf
eps = 0.2, the radius of the paper's Fashion-MNIST attacks.

It was written before the authors' release was read, from the paper's one-line description ("four
convolutional layers and a fully connected layer with batch normalization", Sec. 5). The release
specifies both the model and the training (`fashion-mnist-master/model.py`, `train.py`,
`models/a_very_robust_model/config.json`); they are `configs/daa_release_fmnist.py`, the target of
the Table-3 study (experiments/daa_fmnist/run.py). This config is kept so that the first study's
committed results can be reproduced; its schedule is ours, not the authors': PGD-7 with step
2.5 eps / 7 and a random start (Madry et al.'s step rule, 7 steps to fit a CPU), Adam 1e-3 with
cosine decay, batch 128. The eval columns are the quick PGD-20 check.

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
