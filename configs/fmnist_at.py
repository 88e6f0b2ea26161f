"""PGD adversarial training (Madry et al. 2018) on the real Fashion-MNIST, linf eps = 0.1: the
experiments/fmnist_at reproduction (about 30 minutes on 2 CPU cores).

C&W's MNIST CNN (CNN-4C3F with widths 32/64, one FC-200 layer instead of two to save time), PGD-7
training attack with step 2.5 eps / 7 (Madry et al.'s rule), random start; Adam 1e-3, cosine decay,
batch 128. Evaluation: the full 10,000-image test set with FGSM, PGD-20, MIM-20, C&W-30 and
APGD-CE-100 (step eps/4 for the PGD family), and their per-example worst case.
"""

from advjax.config import default_config

EPS = 0.1


def get_config():
    c = default_config()
    c.data.name = "fashion_mnist"
    c.model.name = "cnn4c3f"
    c.model.widths = (32, 64)
    c.model.fc_widths = (200,)
    c.model.dropout_rate = 0.0
    c.objective.name = "pgd_at"
    c.objective.eps = EPS
    c.objective.step_size = 2.5 * EPS / 7
    c.objective.steps = 7
    c.optim.name = "adam"
    c.optim.lr = 1e-3
    c.optim.momentum = 0.0
    c.optim.schedule = "cosine"
    c.train.epochs = 4
    c.train.batch_size = 128
    c.train.log_every = 50
    c.eval.limit = 0
    c.eval.batch_size = 500
    c.eval.attacks = [
        dict(name="fgsm", eps=EPS),
        dict(name="pgd", label="pgd-20", eps=EPS, step_size=EPS / 4, steps=20),
        dict(name="mim", label="mim-20", eps=EPS, step_size=EPS / 4, steps=20),
        dict(name="cw_pgd", label="cw-30", eps=EPS, step_size=EPS / 4, steps=30),
        dict(name="apgd_ce", label="apgd-ce-100", eps=EPS, steps=100),
    ]
    return c
