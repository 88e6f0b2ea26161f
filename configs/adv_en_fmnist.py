"""ADV-EN_2 (thesis Ch. 4, Sec. 4.3 baselines): adversarial training of a 2-member ensemble "treated
as one unified model": PGD against the ensemble output (log of the mean member probability), every
member trained on those examples and on x (per-member CE, the authors' `adv_EN`;
`advjax.objectives.ensemble_at`). The same members, adversary budget and optimizer as the
cce_*_fmnist configs (`advjax.config.cce_fmnist_base`): the baseline of CCE-RM_2 / CCE-DM_2.

    advjax train --config configs/adv_en_fmnist.py --workdir workdirs/adv_en_fmnist
"""

from advjax.config import cce_fmnist_base


def get_config():
    c = cce_fmnist_base("adv_en")
    c.objective.loss = "members"
    return c
