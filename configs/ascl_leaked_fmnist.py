"""ASCL with Leaked-LS, Leaked-ASCL (Table 1: positives = same label and prediction, negatives as
Soft-LS) (thesis Ch. 3, Sec. 3.4, Eq. 6) on Fashion-MNIST: L_AT + 1 * L_SCL + 2 * L_VAT, tau = 0.07,
on the thesis' MNIST network with ASCL's Adam 1e-3 (`advjax.config.ascl_fmnist_base`).
`--config.objective.variant=release` gives the released code's scales, similarity and counterpart
rule (`advjax.objectives.ascl`). Baseline: ascl_none_fmnist (ADR-None, same protocol).

    advjax train --config configs/ascl_leaked_fmnist.py --workdir workdirs/ascl_leaked_fmnist
"""

from advjax.config import ascl_fmnist_base


def get_config():
    return ascl_fmnist_base("leaked_ls")
