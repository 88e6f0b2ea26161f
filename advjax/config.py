"""Defaults shared by every config in configs/: `default_config()` returns a complete ConfigDict.

A config file `configs/NAME.py` defines `get_config()`, starting from `default_config()` and setting
what its experiment needs; every key the loop reads exists here, so a mistyped override on the
command line fails at once (ml-collections refuses unknown keys).

Sections (design.md, contract 3): data, model, objective (name + hyperparameters), optim, train,
eval (a list of attack specs), distributed.
"""

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
    c.train.keep_checkpoints = 3
    c.train.progress = True

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
