"""Command line: `advjax train | eval | attack --config configs/NAME.py --workdir DIR [--config.a.b=v]`.

Parses an ml-collections config (overrides with `--config.section.key=value`) and calls the library;
nothing else lives here.

  advjax train  --config C --workdir W     train (resuming from W's last checkpoint), then evaluate
                [--allow_config_change]    go on although C differs from W's config.json
  advjax eval   --config C --workdir W     evaluate W's last checkpoint: Markdown table + eval.json
                [--limit N]                on the first N test examples
  advjax attack --config C --workdir W     PNG grid of clean / adversarial / perturbation images, and a
                [--attack NAME] [--eps ...]  PNG of robust accuracy against eps, in W

Exit status: 0 done; 2 refused before any compute (usage, config or workdir error); 3 training
stopped by a guard (non-finite loss or gradient, collapse), checkpoints kept; 75 stopped by
SIGTERM / SIGINT after writing a checkpoint (rerun the same command to resume); 128 + N a second
signal N (no checkpoint); 1 anything else.
"""

from __future__ import annotations

import json
import os
import sys

COMMANDS = ("train", "eval", "attack")
EXIT_USAGE = 2
EXIT_TRAINING_STOPPED = 3
EXIT_PREEMPTED = 75  # = advjax.preemption.EXIT_PREEMPTED (not imported: it would import JAX early)


class UsageError(Exception):
    """A mistake on the command line or in the config file: one line, exit status 2."""


def _usage() -> str:
    return (__doc__ or "").strip() + "\n"


def _config_keys(config, prefix="config"):
    out = []
    for k, v in config.items():
        if hasattr(v, "items"):
            out += _config_keys(v, f"{prefix}.{k}")
        else:
            out.append(f"{prefix}.{k}")
    return out


def _config_path(argv):
    """The --config value (path[:argument], as ml-collections' config files take) and argv without it."""
    rest, path = [], None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--config="):
            path = a.split("=", 1)[1]
        elif a == "--config":
            if i + 1 >= len(argv):
                raise UsageError("--config needs a path")
            path = argv[i + 1]
            i += 1
        else:
            rest.append(a)
        i += 1
    return path, rest


def load_config_file(spec: str):
    """Executes configs/NAME.py once and returns its get_config() (get_config(ARG) for "PATH:ARG")."""
    import importlib.util
    path, arg = spec, None
    if not os.path.exists(path) and ":" in spec:
        path, arg = spec.split(":", 1)
    if not os.path.isfile(path):
        raise UsageError(f"--config={spec}: no such config file")
    module_spec = importlib.util.spec_from_file_location("_advjax_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UsageError(f"--config={spec}: the file defines no get_config()")
    try:
        return module.get_config(arg) if arg is not None else module.get_config()
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        # ml-collections' own checks (a value of the wrong type, an unknown field of a locked
        # section): name the line of the config file, not ml-collections' internals.
        import traceback
        frames = [f for f in traceback.extract_tb(e.__traceback__)
                  if os.path.abspath(f.filename) == os.path.abspath(path)]
        where = f"{path} line {frames[-1].lineno}" if frames else path
        raise UsageError(f"{where}: {type(e).__name__}: {e}") from None


def _explain_override_error(err, argv, keys) -> str:
    """absl's error for a bad --config.* override, restated with the key and the valid keys."""
    overrides = [a[2:].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    unknown = [k for k in overrides if k not in keys]
    if unknown:
        bad = unknown[0]
        section = bad.rsplit(".", 1)[0]
        siblings = [k for k in keys if k.rsplit(".", 1)[0] == section] or keys
        return (f"unknown config key {bad!r}; valid config keys under {section}:\n  "
                + "\n  ".join(siblings))
    return f"{err}\nvalid config keys:\n  " + "\n  ".join(keys)


def _parse(argv):
    from absl import flags
    from ml_collections import config_flags
    path, rest = _config_path(argv)
    if path is None:
        raise UsageError("--config and --workdir are required\n\n" + _usage())
    config = load_config_file(path)
    keys = _config_keys(config)
    fl = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, tables).",
                        flag_values=fl)
    flags.DEFINE_boolean("allow_config_change", False, "train/eval: go on although the config "
                         "differs from the workdir's config.json (train keeps the old one beside "
                         "it).", flag_values=fl)
    flags.DEFINE_integer("limit", 0, "eval/attack: number of test examples (0 = config).",
                         flag_values=fl)
    flags.DEFINE_string("attack", "", "attack: attack spec label from config.eval.attacks "
                        "(default: the first iterative one).", flag_values=fl)
    flags.DEFINE_list("eps", [], "attack: eps values for the accuracy-vs-eps curve.",
                      flag_values=fl)
    flags.DEFINE_integer("num_images", 8, "attack: images in the PNG grid.", flag_values=fl)
    try:
        # Defines a flag per --config.* override on the command line (so a wrong key fails here).
        config_flags.DEFINE_config_dict("config", config, "The config of --config=FILE.",
                                        flag_values=fl, sys_argv=rest)
        fl(rest)
    except (flags.UnrecognizedFlagError, flags.IllegalFlagValueError, ValueError, TypeError,
            KeyError, AttributeError) as e:
        raise UsageError(_explain_override_error(e, rest, keys)) from None
    if fl.workdir is None:
        raise UsageError("--config and --workdir are required\n\n" + _usage())
    if fl.limit < 0:
        raise UsageError(f"--limit must be >= 0 (0: the config's eval.limit), got {fl.limit}")
    if fl.num_images < 1:
        raise UsageError(f"--num_images must be >= 1, got {fl.num_images}")
    return fl


def _eps_values(fl):
    values = []
    for text in fl.eps:
        try:
            values.append(float(text))
        except ValueError:
            raise UsageError(f"--eps: {text!r} is not a number (give a comma-separated list such "
                             f"as --eps 0,0.05,0.1)") from None
        if not values[-1] >= 0:
            raise UsageError(f"--eps: values must be >= 0, got {text}")
    return values or None


def _cmd_train(fl):
    from advjax import train
    result = train.train_and_evaluate(fl.config, fl.workdir,
                                      allow_config_change=fl.allow_config_change)
    print(result.pop("table"))
    print(json.dumps(result, indent=2))


def _cmd_eval(fl):
    from advjax import train
    state, model = train.restore_state(fl.config, fl.workdir,
                                       allow_config_change=fl.allow_config_change)
    result = train.evaluate_state(fl.config, state, model, fl.workdir, limit=fl.limit or None)
    print(result.pop("table"))
    print(json.dumps(result, indent=2))


def _cmd_attack(fl):
    config = fl.config
    eps_values = _eps_values(fl)
    if not config.eval.attacks:
        raise UsageError("attack: config.eval.attacks is empty; add an attack spec")
    specs = [dict(a) for a in config.eval.attacks]
    labels = [s.get("label", s["name"]) for s in specs]
    if fl.attack and fl.attack not in labels:
        raise UsageError(f"--attack={fl.attack!r} is not in config.eval.attacks; valid: {labels}")
    import jax
    from advjax import data, evaluate, train
    # Default: the first iterative attack (a spec with "steps"), more telling than a single step.
    default = next((s for s in specs if "steps" in s), specs[0])
    spec = specs[labels.index(fl.attack)] if fl.attack else default
    state, model = train.restore_state(config, fl.workdir,
                                       allow_config_change=fl.allow_config_change)
    x, y = data.load_numpy(config.data.name, "test", data_dir=config.data.data_dir,
                           limit=fl.limit or config.eval.get("limit") or 1000)
    paths = evaluate.attack_report(train.eval_logits_fn(model, state), x, y, spec, fl.workdir,
                                   key=jax.random.PRNGKey(config.seed + 2),
                                   eps_values=eps_values, num_images=fl.num_images,
                                   class_names=data.dataset_info(config.data.name).get("class_names"),
                                   batch_size=config.eval.batch_size)
    for p in paths:
        print(p)


def _fail(message: str, status: int) -> int:
    sys.stderr.write(f"advjax: {message}\n")
    sys.stderr.flush()
    return status


def main(argv=None):
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] not in COMMANDS:
        sys.stderr.write(_usage())
        return EXIT_USAGE
    cmd = argv.pop(1)
    try:
        fl = _parse(argv)
    except UsageError as e:
        return _fail(str(e), EXIT_USAGE)
    from advjax import preemption, train, workdir
    try:
        {"train": _cmd_train, "eval": _cmd_eval, "attack": _cmd_attack}[cmd](fl)
    except UsageError as e:
        return _fail(str(e), EXIT_USAGE)
    except (train.ConfigError, workdir.WorkdirError) as e:
        return _fail(f"{type(e).__name__}: {e}", EXIT_USAGE)
    except (FloatingPointError, train.TrainingCollapsedError) as e:
        return _fail(f"{type(e).__name__}: {e}", EXIT_TRAINING_STOPPED)
    except preemption.Preempted as e:
        return _fail(f"{e} (exit status {EXIT_PREEMPTED})", EXIT_PREEMPTED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
