"""ADT_IMP-AM (Sec. 3.3) on Fashion-MNIST: an implicit generator delta = eps tanh(G(x, z)), z ~ U(-1, 1)
noise channels, entropy by the variational lower bound with an encoder q(z | delta, x), lam = 0.01.

ADT Table-1 protocol on Fashion-MNIST (one of five configs: adt_standard_fmnist, adt_at_pgd_fmnist,
adt_exp_fmnist, adt_exp_am_fmnist, adt_imp_am_fmnist; identical data, model, optimizer, schedule and
evaluation, only the objective differs). linf eps = 0.1; the evaluation columns are the paper's
(Sec. 5.1): FGSM, PGD-20, PGD-100, MIM-20, C&W (margin loss by PGD, 30 steps), all with step size
eps / 4 and, as in the authors' evaluation code, a uniform random start; plus the EXP attack (Sec. 5.3,
T = 20, k = 10). A_rob (Eq. 12) is the per-example worst case over these columns.

    advjax train --config configs/adt_imp_am_fmnist.py --workdir workdirs/adt_imp_am_fmnist
"""

from advjax.config import default_config

EPS = 0.1
STEP = EPS / 4


def _fmnist_table1():
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
        dict(name="mim", label="mim-20", eps=EPS, step_size=STEP, steps=20, random_start=True),
        dict(name="cw_pgd", label="cw-30", eps=EPS, step_size=STEP, steps=30),
        dict(name="adt_exp", label="exp", eps=EPS, steps=20, samples=10),
    ]
    return c


def get_config():
    c = _fmnist_table1()
    c.objective.name = "adt_imp_am"
    c.objective.eps = EPS
    c.objective.input_shape = (28, 28, 1)
    c.objective.lam = 0.01
    c.objective.z_channels = 1
    c.objective.generator_lr = 2e-4
    c.objective.generator_width = 32
    c.objective.generator_blocks = 3
    c.objective.encoder_width = 16
    c.objective.encoder_blocks = 2
    c.objective.generator_input = "image_and_gradients"
    return c
