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

from typing import Any, Dict, Sequence

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
    # AutoAttack (advjax.evaluate.autoattack) after the attacks: off while norm is "".
    c.eval.autoattack = ml_collections.ConfigDict()
    c.eval.autoattack.norm = ""           # "" (off) | "linf" | "l2"
    c.eval.autoattack.eps = 0.0
    c.eval.autoattack.version = "standard"  # "standard" | "plus" ("rand": Python API only)

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

# The authors' schedule for no-batch-norm MNIST CNNs (TRADES' train_trades_mnist.py, the thesis' ADR
# MNIST runs): SGD 0.01, momentum 0.9, 100 epochs, learning rate x0.1 at epochs 55, 75 and 90.
MNIST_SGD_LR = 0.01
MNIST_EPOCHS = 100
MNIST_DECAY_FRACTIONS = (0.55, 0.75, 0.9)
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)   # Fashion-MNIST training set, pixels in [0, 1]


def scaled_decay_epochs(epochs: int,
                        fractions: Sequence[float] = MNIST_DECAY_FRACTIONS) -> tuple:
    """The piecewise schedule's decay epochs for a run of `epochs` epochs: the authors' 55/75/90 of
    100, scaled (a study that cuts the epochs keeps the schedule's shape)."""
    return tuple(sorted({max(1, int(round(f * epochs))) for f in fractions}))


def fmnist_small_cnn_protocol(c: ml_collections.ConfigDict, *, weight_decay: float = 0.0,
                              batch_size: int = 128) -> ml_collections.ConfigDict:
    """All *_fmnist studies: Fashion-MNIST (all 60k / 10k), CNN-4C3F 16/32/128 (a C&W-type MNIST
    CNN without batch norm or dropout), and the authors' optimizer for such a network: SGD 0.01,
    momentum 0.9, x0.1 at 55/75/90 % of 100 epochs (TRADES' and UDR's MNIST settings; the fidelity
    review's "shared study protocol": SGD 0.05 collapsed five runs of this network), eval batch 500.
    """
    c.data.name = "fashion_mnist"
    c.data.train_limit = 0
    c.model.name = "cnn4c3f"
    c.model.widths = (16, 32)
    c.model.fc_widths = (128,)
    c.model.dropout_rate = 0.0
    c.optim.name = "sgd"
    c.optim.lr = MNIST_SGD_LR
    c.optim.momentum = 0.9
    c.optim.weight_decay = weight_decay
    c.optim.schedule = "piecewise"
    c.optim.decay_epochs = scaled_decay_epochs(MNIST_EPOCHS)
    c.optim.decay_factor = 0.1
    c.optim.warmup_epochs = 0.0
    c.optim.grad_clip = 0.0
    c.train.epochs = MNIST_EPOCHS
    c.train.batch_size = batch_size
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
    """ADT Table-1 study (adt_*_fmnist): the protocol with ADT's weight decay 2e-4, plus eval FGSM,
    PGD-20/100, MIM-20, C&W-30, EXP.

    Five configs (adt_standard_fmnist, adt_at_pgd_fmnist, adt_exp_fmnist, adt_exp_am_fmnist,
    adt_imp_am_fmnist) share data, model, optimizer, schedule and evaluation; only the objective
    differs. Optimizer: ADT's release trains a batch-norm WRN with SGD 0.1 (momentum 0.9, weight
    decay 2e-4, batch 64); for this network without batch norm the no-batch-norm MNIST rate SGD 0.01
    (`fmnist_small_cnn_protocol`), with ADT's weight decay 2e-4. linf eps = 0.1; the evaluation
    columns are the paper's (Sec. 5.1): FGSM, PGD-20, PGD-100, MIM-20, C&W (margin loss by PGD,
    30 steps), all with step size eps / 4 and, as in the authors' evaluation code, a uniform random
    start; plus the EXP attack (Sec. 5.3, T = 20, k = 10). A_rob (Eq. 12) is the per-example worst
    case over these columns.
    """
    c = fmnist_small_cnn_protocol(default_config(), weight_decay=2e-4)
    step = eps / 4
    c.eval.attacks = fmnist_core_attacks(eps) + [
        dict(name="mim", label="mim-20", eps=eps, step_size=step, steps=20, random_start=True),
        dict(name="cw_pgd", label="cw-30", eps=eps, step_size=step, steps=30),
        dict(name="adt_exp", label="exp", eps=eps, steps=20, samples=10),
    ]
    return c


def adt_am_generator(c: ml_collections.ConfigDict, eps: float = 0.1) -> ml_collections.ConfigDict:
    """ADT study (adt_exp_am, adt_imp_am): eps, the released code's variant (raw two-step gradient
    inputs, the released generator's block structure), Adam 2e-4 (b1 0.5), base width 32 (the
    release's 256 is ~1000x this CNN's cost per example; a cut)."""
    c.objective.eps = eps
    c.objective.input_shape = (28, 28, 1)
    c.objective.variant = "code"
    c.objective.generator_lr = 2e-4
    c.objective.generator_width = 32
    c.objective.generator_blocks = 3
    return c


def dro_fmnist_base(eps: float = 0.1) -> ml_collections.ConfigDict:
    """Distributional-robustness study (wrm, dra_*, udr_*, awp, the point-wise baselines): the
    protocol (SGD 0.01 as UDR's and TRADES' MNIST scripts), plus eval FGSM, PGD at and above eps,
    l2 PGD, APGD-CE."""
    c = fmnist_small_cnn_protocol(default_config())
    c.eval.attacks = fmnist_core_attacks(eps) + [
        dict(name="pgd", label="pgd-20-eps0.15", eps=0.15, step_size=0.15 / 4, steps=20),
        dict(name="pgd", label="pgd-20-eps0.2", eps=0.2, step_size=0.2 / 4, steps=20),
        dict(name="pgd", label="pgd-l2-20-eps1.5", eps=1.5, step_size=1.5 / 4, steps=20,
             norm="l2"),
        dict(name="apgd_ce", label="apgd-ce-100", eps=eps, steps=100),
    ]
    return c


def udr_pgd_adversary(c: ml_collections.ConfigDict, eps: float = 0.1) -> ml_collections.ConfigDict:
    """UDR study (udr_*_fmnist): the PGD-10 budget (step eps / 4) and the authors' code: per-pixel
    linf pull, tau = eta, lambda_0 = 1, lambda by (19) on the mean |delta_j| every 10 steps with
    eta_lambda = 0.02 and no clamp (`lambda_schedule="code"`)."""
    c.objective.eps = eps
    c.objective.step_size = eps / 4
    c.objective.steps = 10
    c.objective.tau_steps = 1.0
    c.objective.lambda_0 = 1.0
    c.objective.lambda_lr = 0.02
    c.objective.lambda_distance = "mean_abs"
    c.objective.lambda_schedule = "code"
    c.objective.lambda_period = 10
    c.objective.pull = "linf"
    return c


def ro_fmnist_base() -> ml_collections.ConfigDict:
    """Robust-optimization study (ro_*_fmnist): the paper's MNIST "baseline net" (`ro_cnn`) with
    the released Lua scripts' training: SGD 0.01, momentum 0.9, L2 penalty 1e-3 on all weights,
    batch 100, constant rate (their decay lr / (1 + 5e-6 t) moves lr by 6 % in 12,000 steps and is
    left out), all 60k / 10k images. The release trains until stopped; 20 epochs here. Eval: FGSM
    (the paper's Fig. 3) and PGD-20 (step eps / 4) at eps 0.02 ... 0.2.
    """
    c = default_config()
    c.data.name = "fashion_mnist"
    c.data.train_limit = 0
    c.model.name = "ro_cnn"
    c.model.mean = FMNIST_MEAN
    c.model.std = FMNIST_STD
    c.optim.name = "sgd"
    c.optim.lr = 0.01
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-3
    c.optim.schedule = "constant"
    c.train.epochs = 20
    c.train.batch_size = 100
    c.train.log_every = 50
    c.train.checkpoint_every_steps = 600
    c.eval.batch_size = 500
    c.eval.limit = 0
    c.eval.attacks = [dict(name="fgsm", label=f"fgsm-{e}", eps=e) for e in RO_EVAL_EPS] + [
        dict(name="pgd", label=f"pgd-20-{e}", eps=e, step_size=e / 4, steps=20)
        for e in RO_EVAL_EPS]
    return c


# RO radii adapted to Fashion-MNIST. The released scripts perturb standardized inputs (pixels / std)
# by 0.2 (linf) and 2 (l1: one pixel; l2); in [0, 1] pixel units that is radius * std: 0.2 * 0.353
# = 0.07 and 2 * 0.353 = 0.7 on Fashion-MNIST.
RO_LINF_EPS = 0.07
RO_L1_EPS = 0.7
RO_L2_EPS = 0.7
RO_EVAL_EPS = (0.02, 0.05, 0.07, 0.1, 0.15, 0.2)


def thesis_fmnist_base(eps: float = 0.1) -> ml_collections.ConfigDict:
    """Thesis Ch. 3-4 study (adr_*, ascl_*, cce_*, adv_en_*; issue 16): all of Fashion-MNIST
    (60k / 10k), the thesis' MNIST network, training PGD k = 20 step 0.01 and the thesis' MNIST evaluation.

    Network: CNN-4C3F(32) of the ADR supplement (thesis l. 1170-1172: 2 x Conv(32), max-pool,
    2 x Conv(32), max-pool | FC(200), ReLU, Dropout(0.5), FC(200), ReLU, FC(10)), 3x3 'VALID'
    convolutions as C&W's. Training adversary (ADR supp. Table 2, MNIST): linf PGD, k = 20 steps of
    0.01, uniform random start, at eps = 0.1 (the thesis' MNIST eps 0.3 is MNIST's; 0.1 is the
    Fashion-MNIST radius of every study here). Evaluation (ADR Sec. 4.2 MNIST: PGD k = 40 with step
    0.01 and 0.02 at eps = eps_d; supp. Table 4: k = 100; Table 2: multi-targeted PGD), each with a
    random start; A_rob is the per-example worst case. Batch 128. The optimizer is the method's
    (`adr_fmnist_base`, `ascl_fmnist_base`, `cce_fmnist_base`).
    """
    c = default_config()
    c.data.name = "fashion_mnist"
    c.model.name = "cnn4c3f"
    c.model.widths = (32, 32)
    c.model.fc_widths = (200, 200)
    c.model.dropout_rate = 0.5
    c.train.batch_size = 128
    c.train.log_every = 50
    c.train.checkpoint_every_steps = 500
    c.eval.batch_size = 500
    c.eval.limit = 0  # the whole test split
    c.eval.attacks = [
        dict(name="pgd", label="pgd-40", eps=eps, step_size=0.01, steps=40),
        dict(name="pgd", label="pgd-40-step0.02", eps=eps, step_size=0.02, steps=40),
        dict(name="pgd", label="pgd-100", eps=eps, step_size=0.01, steps=100),
        dict(name="multitargeted_pgd", label="mt-pgd-20", eps=eps, step_size=0.01, steps=20),
    ]
    c.objective.eps = eps
    c.objective.step_size = 0.01
    c.objective.steps = 20
    return c


def adr_fmnist_base(name: str = "adr_adv") -> ml_collections.ConfigDict:
    """ADR study (adr_none, adr_adv, adr_trades, adr_baseline_trades): `thesis_fmnist_base` with
    ADR's MNIST optimizer (supp. Table 2; l. 1020): SGD lr 0.01, momentum 0.9, no weight decay, x0.1 at
    epochs 55 / 75 / 90 of 100. Objective `name`; for adr_adv / adr_trades the supplement's MNIST
    weights l_lc = l_gb = l_smt = 1, l_conf = 0 (Table 1) and alpha = 0.99.
    """
    c = thesis_fmnist_base()
    c.optim.name = "sgd"
    c.optim.lr = 0.01
    c.optim.momentum = 0.9
    c.optim.weight_decay = 0.0
    c.optim.schedule = "piecewise"
    c.optim.decay_epochs = (55, 75, 90)
    c.optim.decay_factor = 0.1
    c.train.epochs = 100
    c.objective.name = name
    if name in ("adr_adv", "adr_trades"):
        c.objective.lambda_lc = 1.0
        c.objective.lambda_gb = 1.0
        c.objective.lambda_conf = 0.0
        c.objective.lambda_smt = 1.0
        c.objective.alpha = 0.99
    if name == "adr_adv":
        c.objective.random_start = True
    return c


def ascl_fmnist_base(selection: str = "global") -> ml_collections.ConfigDict:
    """ASCL study (ascl_global / hard / soft / leaked, ascl_none): `thesis_fmnist_base` with ASCL's
    optimizer for the standard CNN (App. A, l. 1547: Adam lr 1e-3; no clipping, no decay),
    100 epochs (ADR's MNIST length; ASCL has no MNIST run). Objective ascl with `selection`,
    tau = 0.07, l_SCL = 1, l_VAT = 2 (Sec. 4.1). selection "none": ADR-None under this protocol
    (adr_adv with every weight 0: L_AT of ASCL's Eq. 4 alone, the same loss and passes as ascl with
    l_SCL = l_VAT = 0), the matched baseline of every ASCL row.
    """
    c = thesis_fmnist_base()
    c.optim.name = "adam"
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.0
    c.optim.schedule = "constant"
    c.train.epochs = 100
    c.objective.random_start = True
    if selection == "none":
        c.objective.name = "adr_adv"
        for term in ("lc", "gb", "conf", "smt"):
            c.objective[f"lambda_{term}"] = 0.0
        c.objective.alpha = 0.99
        return c
    c.objective.name = "ascl"
    c.objective.tau = 0.07
    c.objective.selection = selection
    c.objective.lambda_scl = 1.0
    c.objective.lambda_vat = 2.0
    c.objective.variant = "thesis"  # "release": the released code's scales (objectives.ascl)
    return c


def cce_fmnist_base(name: str = "cce") -> ml_collections.ConfigDict:
    """CCE study (cce_base / rm / dm, adv_en): `thesis_fmnist_base` data and evaluation, a 2-member
    ensemble of CCE's MNIST member (Table 8: 2 x Conv(32), max-pool, 2 x Conv(64), max-pool,
    FC(200), ReLU, Dropout(0.5), FC(200), ReLU, FC(10)) and CCE's optimizer (l. 2232: Adam lr 1e-3 "for all
    datasets", batch 64; 100 epochs for MNIST). Training PGD: k = 10 steps of eps / 4 with a random
    start (the thesis' CIFAR-10 setting, 10 steps of 2/255 at 8/255; it gives none for MNIST).
    Objective `name` ("cce" or "adv_en").
    """
    c = thesis_fmnist_base()
    c.model = ml_collections.ConfigDict(dict(
        name="ensemble", member="cnn4c3f", num_members=2,
        member_config=dict(widths=(32, 64), fc_widths=(200, 200), dropout_rate=0.5)))
    c.optim.name = "adam"
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.0
    c.optim.schedule = "constant"
    c.train.epochs = 100
    c.train.batch_size = 64
    c.objective.name = name
    c.objective.step_size = c.objective.eps / 4
    c.objective.steps = 10
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
