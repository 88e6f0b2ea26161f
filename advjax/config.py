"""Defaults shared by every config in configs/: `default_config()` returns a complete ConfigDict.

A config file `configs/NAME.py` defines `get_config()`, starting from `default_config()` and setting
what its experiment needs; every key the loop reads exists here, so a mistyped override on the
command line fails at once (ml-collections refuses unknown keys).

Sections (design.md, contract 3): data, model, objective (name + hyperparameters), optim, train,
eval (a list of attack specs), distributed.

`check_config(config)` rejects keys that `default_config()` does not have (outside the free-form
`model` and `objective` sections, which advjax.train checks against the model's fields and the
objective's signature) and out-of-range train / eval values, before anything is computed.
"""

from typing import Any, Dict

import ml_collections


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"
    c.data.data_dir = ""          # tfds data_dir ("" = ADVJAX_DATA_DIR or the tfds default)
    c.data.train_limit = 0        # 0 = whole split
    c.data.augment = ""           # "" | "crop_flip" | "crop"

    c.model = ml_collections.ConfigDict()
    c.model.name = "mlp"

    c.objective = ml_collections.ConfigDict()
    c.objective.name = "standard"

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "sgd"
    c.optim.lr = 0.1
    c.optim.momentum = 0.9
    c.optim.nesterov = False
    c.optim.weight_decay = 0.0
    c.optim.schedule = "constant"   # constant | cosine | piecewise
    c.optim.decay_epochs = ()
    c.optim.decay_factor = 0.1
    c.optim.warmup_epochs = 0.0
    c.optim.grad_clip = 0.0

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 1
    c.train.batch_size = 128        # global, over all devices and processes
    c.train.num_devices = 0         # 0 = all local devices
    c.train.log_every = 50
    c.train.checkpoint_every_steps = 200
    c.train.keep_checkpoints = 3      # >= 1: the newest checkpoints kept (older ones are deleted)
    c.train.progress = True
    # Several seeds in one process (advjax.train, "Several seeds"): seeds = K >= 1 trains replicas
    # with seeds seed, seed + 1, ..., seed + K - 1 side by side, each in WORKDIR/seed<seed + k>.
    # seeds_mode: "auto" (vmap on GPU / TPU, sequential on CPU), "vmap" (one vmapped program over
    # the replicas) or "sequential" (the single-seed step, run once per replica per step).
    c.train.seeds = 1
    c.train.seeds_mode = "auto"
    # Collapse guard (advjax.train.CollapseGuard): after collapse_warmup_epochs, stop the run when,
    # averaged over the last collapse_window_epochs, the model (evaluation mode, on the training
    # batches, probed every log_every steps) predicts one class for at least collapse_top_class of
    # the examples, or is at most collapse_acc_margin above chance accuracy.
    c.train.collapse_guard = True
    c.train.collapse_warmup_epochs = 1.0
    c.train.collapse_window_epochs = 1.0
    c.train.collapse_top_class = 0.9
    c.train.collapse_acc_margin = 0.02

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 256
    c.eval.limit = 0                # 0 = whole test split
    c.eval.attacks = []

    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ""
    c.distributed.num_processes = 1
    c.distributed.process_id = 0
    c.distributed.auto = False
    c.distributed.cpu_collectives = ""       # "gloo" for multi-process CPU runs
    c.distributed.initialization_timeout = 300  # s to wait for every process to connect
    c.distributed.heartbeat_timeout = 100       # s without heartbeats before a process counts as dead
    c.distributed.shutdown_timeout = 300        # s a finished process waits for the others at exit
    return c


# Shared bases of the Fashion-MNIST studies in configs/*_fmnist.py. A config starts from its study's
# base and sets what differs (usually the objective).


def fmnist_small_cnn_protocol(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """All *_fmnist studies: Fashion-MNIST, CNN-4C3F (16, 32 / 128), SGD 0.05 cosine, 20 epochs, eval batch 500."""
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
    return c


def fmnist_core_attacks(eps: float) -> list:
    """All *_fmnist studies: the evaluation columns they share, FGSM and PGD-20/100 with step eps / 4."""
    step = eps / 4
    return [
        dict(name="fgsm", eps=eps),
        dict(name="pgd", label="pgd-20", eps=eps, step_size=step, steps=20),
        dict(name="pgd", label="pgd-100", eps=eps, step_size=step, steps=100),
    ]


def adt_fmnist_base(eps: float = 0.1) -> ml_collections.ConfigDict:
    """ADT Table-1 study (adt_*_fmnist): the protocol plus eval FGSM, PGD-20/100, MIM-20, C&W-30, EXP.

    Five configs (adt_standard_fmnist, adt_at_pgd_fmnist, adt_exp_fmnist, adt_exp_am_fmnist,
    adt_imp_am_fmnist) share data, model, optimizer, schedule and evaluation; only the objective
    differs. linf eps = 0.1; the evaluation columns are the paper's (Sec. 5.1): FGSM, PGD-20,
    PGD-100, MIM-20, C&W (margin loss by PGD, 30 steps), all with step size eps / 4 and, as in the
    authors' evaluation code, a uniform random start; plus the EXP attack (Sec. 5.3, T = 20,
    k = 10). A_rob (Eq. 12) is the per-example worst case over these columns.
    """
    c = fmnist_small_cnn_protocol(default_config())
    step = eps / 4
    c.eval.attacks = fmnist_core_attacks(eps) + [
        dict(name="mim", label="mim-20", eps=eps, step_size=step, steps=20, random_start=True),
        dict(name="cw_pgd", label="cw-30", eps=eps, step_size=step, steps=30),
        dict(name="adt_exp", label="exp", eps=eps, steps=20, samples=10),
    ]
    return c


def adt_am_generator(c: ml_collections.ConfigDict, eps: float = 0.1) -> ml_collections.ConfigDict:
    """ADT study (adt_exp_am, adt_imp_am): eps, lam = 0.01 and the residual generator (width 32, 3 blocks, Adam 2e-4)."""
    c.objective.eps = eps
    c.objective.input_shape = (28, 28, 1)
    c.objective.lam = 0.01
    c.objective.generator_lr = 2e-4
    c.objective.generator_width = 32
    c.objective.generator_blocks = 3
    c.objective.generator_input = "image_and_gradients"
    return c


def dro_fmnist_base(eps: float = 0.1) -> ml_collections.ConfigDict:
    """Distributional-robustness study (wrm, dra_*, udr_*, awp): the protocol plus eval FGSM, PGD at/above eps, l2 PGD, APGD-CE."""
    c = fmnist_small_cnn_protocol(default_config())
    step = eps / 4
    c.eval.attacks = fmnist_core_attacks(eps) + [
        dict(name="pgd", label="pgd-20-eps0.15", eps=0.15, step_size=0.15 / 4, steps=20),
        dict(name="pgd", label="pgd-20-eps0.2", eps=0.2, step_size=0.2 / 4, steps=20),
        dict(name="pgd", label="pgd-l2-20-eps1.5", eps=1.5, step_size=1.5 / 4, steps=20,
             norm="l2"),
        dict(name="apgd_ce", label="apgd-ce-100", eps=eps, steps=100),
    ]
    return c


def udr_pgd_adversary(c: ml_collections.ConfigDict, eps: float = 0.1) -> ml_collections.ConfigDict:
    """UDR study (udr_*_fmnist): PGD-10 budget (step eps / 4), linf pull with tau = eta, lambda_0 = 1, eta_lambda = 0.02, mean_abs distance."""
    c.objective.eps = eps
    c.objective.step_size = eps / 4
    c.objective.steps = 10
    c.objective.tau_steps = 1.0
    c.objective.lambda_0 = 1.0
    c.objective.lambda_lr = 0.02
    c.objective.lambda_distance = "mean_abs"
    c.objective.pull = "linf"
    return c


def thesis_fmnist_base(eps: float = 0.1) -> ml_collections.ConfigDict:
    """Thesis Ch. 3-4 study (adr_*, ascl_*, cce_*): the protocol, training PGD-10 (step eps / 4), eval FGSM, PGD-20/100, MT-PGD-20, APGD-CE."""
    c = fmnist_small_cnn_protocol(default_config())
    step = eps / 4
    c.eval.attacks = fmnist_core_attacks(eps) + [
        dict(name="multitargeted_pgd", label="mt-pgd-20", eps=eps, step_size=step, steps=20),
        dict(name="apgd_ce", label="apgd-ce-100", eps=eps, steps=100),
    ]
    c.objective.eps = eps
    c.objective.step_size = step
    c.objective.steps = 10
    return c


def adr_fmnist_base(name: str) -> ml_collections.ConfigDict:
    """ADR study (adr_adv, adr_trades): thesis base, objective `name`, l_lc = l_gb = l_smt = 1, l_conf = 0, alpha = 0.99."""
    c = thesis_fmnist_base()
    c.objective.name = name
    c.objective.lambda_lc = 1.0
    c.objective.lambda_gb = 1.0
    c.objective.lambda_conf = 0.0
    c.objective.lambda_smt = 1.0
    c.objective.alpha = 0.99
    return c


def ascl_fmnist_base() -> ml_collections.ConfigDict:
    """ASCL study (ascl_global, ascl_leaked): thesis base, objective ascl with tau = 0.07, l_scl = 1, l_vat = 2."""
    c = thesis_fmnist_base()
    c.objective.name = "ascl"
    c.objective.tau = 0.07
    c.objective.lambda_scl = 1.0
    c.objective.lambda_vat = 2.0
    return c


def cce_fmnist_base() -> ml_collections.ConfigDict:
    """CCE study (cce_base, cce_rm): thesis base, a 2-member ensemble of its CNN-4C3F, objective cce with random start."""
    c = thesis_fmnist_base()
    member = dict(c.model.to_dict())
    member.pop("name")
    c.model = ml_collections.ConfigDict(dict(name="ensemble", member="cnn4c3f", num_members=2,
                                             member_config=member))
    c.objective.name = "cce"
    c.objective.random_start = True
    return c


# ------------------------------------------------------------------------------------------------
# Checks before a run
# ------------------------------------------------------------------------------------------------

#: Sections whose keys depend on the chosen model / objective (checked by advjax.train.validate).
FREE_FORM_SECTIONS = ("model", "objective")


def _flat_keys(cfg, prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, ml_collections.ConfigDict):
            out.update(_flat_keys(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def unknown_keys(config: ml_collections.ConfigDict) -> Dict[str, list]:
    """{unknown key: the valid keys of its section} for keys outside the free-form sections."""
    valid = _flat_keys(default_config())
    out = {}
    for key in _flat_keys(config):
        if key.split(".", 1)[0] in FREE_FORM_SECTIONS or key in valid:
            continue
        section = key.rsplit(".", 1)[0] if "." in key else ""
        siblings = [k for k in valid if (k.rsplit(".", 1)[0] if "." in k else "") == section]
        out[key] = siblings or sorted({k.split(".", 1)[0] for k in valid})
    return out


#: config.train.seeds_mode values (advjax.train.resolve_seeds_mode).
SEEDS_MODES = ("auto", "vmap", "sequential")

# (key, minimum, integer?) for the train / eval values the loop divides by, counts or loops over.
_RANGES = (
    ("train.epochs", 1, True), ("train.batch_size", 1, True), ("train.log_every", 1, True),
    ("train.keep_checkpoints", 1, True), ("train.checkpoint_every_steps", 0, True),
    ("train.num_devices", 0, True), ("train.seeds", 1, True),
    ("train.collapse_warmup_epochs", 0, False),
    ("train.collapse_window_epochs", 0, False), ("train.collapse_acc_margin", 0, False),
    ("eval.batch_size", 1, True), ("eval.limit", 0, True), ("data.train_limit", 0, True),
)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the key for an unknown key or an out-of-range train / eval value."""
    unknown = unknown_keys(config)
    if unknown:
        key, valid = next(iter(unknown.items()))
        others = f" (and {', '.join(sorted(unknown)[1:])})" if len(unknown) > 1 else ""
        raise ValueError(f"unknown config key config.{key}{others}; valid keys beside it:\n  "
                         + "\n  ".join(f"config.{k}" for k in valid))
    flat = _flat_keys(config)
    for key, minimum, integer in _RANGES:
        value = flat.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                integer and int(value) != value):
            kind = "an integer" if integer else "a number"
            raise ValueError(f"config.{key} must be {kind} >= {minimum}, got {value!r}")
        if value < minimum:
            what = {"train.keep_checkpoints": " (0 would delete every checkpoint, the trained "
                                              "model included)"}.get(key, "")
            raise ValueError(f"config.{key} must be >= {minimum}, got {value!r}{what}")
    mode = flat.get("train.seeds_mode")
    if mode is not None and mode not in SEEDS_MODES:
        raise ValueError(f"config.train.seeds_mode must be one of {SEEDS_MODES}, got {mode!r}")
    top = flat.get("train.collapse_top_class")
    if top is not None and not 0.0 < top <= 1.0:
        raise ValueError(f"config.train.collapse_top_class must be in (0, 1], got {top!r}")
    if flat.get("train.collapse_window_epochs") == 0 and flat.get("train.collapse_guard"):
        raise ValueError("config.train.collapse_window_epochs must be > 0 while "
                         "config.train.collapse_guard is on")
