"""TA-MOO adversarial training of an ensemble (thesis Ch. 4, Sec. 3.2 and Alg. 1) on Fashion-MNIST:
every step, one TA-MOO ENS attack against both members of a 2-member CNN-4C3F ensemble (PGD-10 budget,
linf eps 0.1, step eps / 4; lambda = 100, eta_w = 0.005, K = 10, App. C), and each member is trained
on the shared adversarial examples (`advjax.objectives.ensemble_moo_at`, variant "thesis";
`--config.objective.variant=release` trains on the ensemble CE of clean and adversarial examples 1:1
as the authors' code). The thesis' CCE study protocol otherwise (`advjax.config.cce_fmnist_base`);
the ENS column evaluates the trained ensemble under the same attack against its members.

    advjax train --config configs/tamoo_at_fmnist.py --workdir workdirs/tamoo_at_fmnist
"""

from advjax.config import cce_fmnist_base

EPS = 0.1


def get_config():
    c = cce_fmnist_base()
    c.objective = c.objective.__class__(dict(
        name="ensemble_moo_at", eps=EPS, step_size=EPS / 4, steps=10, weighting="tamoo",
        lam=100.0, lr_w=0.005, inner_steps=10, variant="thesis"))
    c.eval.attacks = list(c.eval.attacks) + [
        dict(name="tamoo_ens_members", label="ens-tamoo-20", eps=EPS, step_size=EPS / 4, steps=20,
             weighting="tamoo")]
    return c
