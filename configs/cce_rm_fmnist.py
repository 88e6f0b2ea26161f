"""CCE-RM (thesis Ch. 4, Sec. 4.3, Eq. 5; l_pm = l_dm = 1) of a 2-member ensemble of small CNN-4C3Fs
on Fashion-MNIST; the evaluated model is the ensemble (log of the mean member probability).
Needs "ensemble" in advjax.models.MODELS (advjax/models/ensemble.py.Ensemble); CCE's paper uses Adam
lr 1e-3, here the shared SGD schedule keeps the comparison with the single-model configs.

    advjax train --config configs/cce_rm_fmnist.py --workdir workdirs/cce_rm_fmnist
"""

import ml_collections

from advjax.config import default_config

EPS = 0.1
STEP = EPS / 4


def _fmnist_thesis():
    """Shared protocol of the thesis Ch. 3-4 Fashion-MNIST configs (adr_adv, adr_trades, ascl_global,
    ascl_leaked, cce_rm, cce_base): the data, small CNN-4C3F, optimizer and schedule of the ADT Table-1
    configs (whose adt_at_pgd_fmnist is the PGD-AT baseline), training attack PGD-10 with step eps / 4,
    linf eps = 0.1; evaluation FGSM, PGD-20/100, multi-targeted PGD (ADR Table 2) and APGD-CE."""
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
        dict(name="multitargeted_pgd", label="mt-pgd-20", eps=EPS, step_size=STEP, steps=20),
        dict(name="apgd_ce", label="apgd-ce-100", eps=EPS, steps=100),
    ]
    c.objective.eps = EPS
    c.objective.step_size = STEP
    c.objective.steps = 10
    return c


def get_config():
    c = _fmnist_thesis()
    member = dict(c.model.to_dict())
    member.pop("name")
    c.model = ml_collections.ConfigDict(dict(name="ensemble", member="cnn4c3f", num_members=2,
                                             member_config=member))
    c.objective.name = "cce"
    c.objective.random_start = True
    c.objective.variant = "rm"
    return c
