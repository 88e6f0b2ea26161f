"""DRA_inf (DRA Sec. 3.2 / 4: the Lagrangian attack with c = ||x - x'||_inf) on Fashion-MNIST.

Adam ascent as in wrm_fmnist (15 steps, lr 0.01). The linf subgradient pulls back only the largest
coordinate(s) each step, so gamma must exceed that pixel's |dCE/dx| to bind; gamma = 2 (DRA's ratio
gamma_inf / gamma_2 is 10 on CIFAR-10). Calibrate from the logged metrics as for wrm_fmnist.

linf eps = 0.1. One of the distributional-robustness configs (see `_fmnist_dro`).

    advjax train --config configs/dra_inf_fmnist.py --workdir workdirs/dra_inf_fmnist
"""

from advjax.config import default_config

EPS = 0.1
STEP = EPS / 4


def _fmnist_dro():
    """The shared protocol of the distributional-robustness Fashion-MNIST configs (wrm, dra_inf,
    dra_multi, dra_mahalanobis, udr_pgd, udr_trades, udr_mart, awp, udr_awp): the data, model,
    optimizer and schedule of the ADT Table-1 configs (adt_*_fmnist, whose adt_at_pgd_fmnist is the
    PGD-AT baseline: PGD-10, step eps / 4), and an evaluation with PGD at the training eps and above it
    (UDR Table 2's signal), an l2 PGD (DRA's l2 attacks) and APGD-CE."""
    c = default_config()
    c.data.name = "fashion_mnist"
    c.model.name = "cnn4c3f"
    c.model.widths = (16, 32)
    c.model.fc_widths = (128,)
    c.model.dropout_rate = 0.0
    c.optim.name = "sgd"
    c.optim.lr = 0.05
    c.optim.momentum = 0.9
    c.optim.weight_decay = 5e-4
    c.optim.schedule = "cosine"
    c.train.epochs = 20
    c.train.batch_size = 128
    c.train.log_every = 50
    c.train.checkpoint_every_steps = 500
    c.eval.batch_size = 500
    c.eval.limit = 0  # the whole test split (override with --limit)
    c.eval.attacks = [
        dict(name="fgsm", eps=EPS),
        dict(name="pgd", label="pgd-20", eps=EPS, step_size=STEP, steps=20),
        dict(name="pgd", label="pgd-100", eps=EPS, step_size=STEP, steps=100),
        dict(name="pgd", label="pgd-20-eps0.15", eps=0.15, step_size=0.15 / 4, steps=20),
        dict(name="pgd", label="pgd-20-eps0.2", eps=0.2, step_size=0.2 / 4, steps=20),
        dict(name="pgd", label="pgd-l2-20-eps1.5", eps=1.5, step_size=1.5 / 4, steps=20,
             norm="l2"),
        dict(name="apgd_ce", label="apgd-ce-100", eps=EPS, steps=100),
    ]
    return c


def get_config():
    c = _fmnist_dro()
    c.objective.name = "dra_inf"
    c.objective.gamma = 2.0
    c.objective.step_size = 0.01
    c.objective.steps = 15
    c.objective.ascent = "adam"
    return c
