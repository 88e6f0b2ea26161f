"""A seconds-long smoke run: PGD-AT of a small MLP on scikit-learn's 8x8 digits (no data to fetch)."""

from advjax.config import default_config


def get_config():
    c = default_config()
    c.data.name = "digits"
    c.model.name = "mlp"
    c.model.hidden = (64,)
    c.objective.name = "pgd_at"
    c.objective.eps = 0.1
    c.objective.step_size = 0.025
    c.objective.steps = 5
    c.objective.random_start = True
    c.optim.name = "sgd"
    c.optim.lr = 0.1
    c.train.epochs = 3
    c.train.batch_size = 64
    c.train.log_every = 10
    c.train.checkpoint_every_steps = 20
    c.eval.batch_size = 128
    c.eval.attacks = [
        dict(name="fgsm", eps=0.1),
        dict(name="pgd", label="pgd-20", eps=0.1, step_size=0.025, steps=20),
    ]
    return c
