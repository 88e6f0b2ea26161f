"""Quickstart: PGD adversarial training (Madry et al. 2018) of a small CNN-4C3F on the real
Fashion-MNIST (Debian's dataset-fashion-mnist), linf eps = 0.1, then FGSM / PGD-20 / APGD-CE /
APGD-T evaluation on 1,000 test images. A few minutes on 2 CPU cores.

    advjax train --config configs/quickstart.py --workdir workdirs/quickstart

The targeted APGD-T is there because an evaluation by untargeted attacks alone over-estimates
robustness; it uses 3 target classes and 50 iterations (AutoAttack's: 9 and 100) to keep the
quickstart short. The full AutoAttack (standard version) of the trained model:

    advjax eval --config configs/quickstart.py --workdir workdirs/quickstart \
        --config.eval.autoattack.norm=linf --config.eval.autoattack.eps=0.1
"""

from advjax.config import default_config


def get_config():
    c = default_config()
    c.data.name = "fashion_mnist"
    c.model.name = "cnn4c3f"
    c.model.widths = (16, 32)
    c.model.fc_widths = (128,)
    c.model.dropout_rate = 0.0
    c.objective.name = "pgd_at"
    c.objective.eps = 0.1
    c.objective.step_size = 0.025
    c.objective.steps = 5
    c.optim.name = "adam"
    c.optim.lr = 1e-3
    c.optim.momentum = 0.0
    c.train.epochs = 1
    c.train.batch_size = 128
    c.train.log_every = 25
    c.eval.limit = 1000
    c.eval.attacks = [
        dict(name="fgsm", eps=0.1),
        dict(name="pgd", label="pgd-20", eps=0.1, step_size=0.025, steps=20),
        dict(name="apgd_ce", label="apgd-ce-50", eps=0.1, steps=50),
        dict(name="apgd_t", label="apgd-t-50", eps=0.1, steps=50, num_target_classes=3),
    ]
    return c
