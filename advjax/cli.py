"""Command line: `advjax train | eval | attack --config configs/NAME.py --workdir DIR [--config.a.b=v]`.

Parses an ml-collections config (overrides with `--config.section.key=value`) and calls the library;
nothing else lives here.

  advjax train  --config C --workdir W     train (resuming from W's last checkpoint), then evaluate
  advjax eval   --config C --workdir W     evaluate W's last checkpoint: Markdown table + eval.json
                [--limit N]                on the first N test examples
  advjax attack --config C --workdir W     PNG grid of clean / adversarial / perturbation images, and a
                [--attack NAME] [--eps ...]  PNG of robust accuracy against eps, in W
"""

from __future__ import annotations

import json
import os
import sys

COMMANDS = ("train", "eval", "attack")


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


def _load_config_file(argv):
    import importlib.util
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if path is None and "--config" in argv:
        i = argv.index("--config")
        path = argv[i + 1] if i + 1 < len(argv) else None
    if not path or not os.path.exists(path):
        return None
    spec = importlib.util.spec_from_file_location("_advjax_cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def _explain_flag_error(err, argv) -> str:
    """absl's error for a bad --config.* override, restated with the key and the valid keys."""
    config = _load_config_file(argv)
    if config is None:
        return str(err)
    keys = _config_keys(config)
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
    fl = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", flag_values=fl)
    flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, tables).",
                        flag_values=fl)
    flags.DEFINE_integer("limit", 0, "eval/attack: number of test examples (0 = config).",
                         flag_values=fl)
    flags.DEFINE_string("attack", "", "attack: attack spec label from config.eval.attacks "
                        "(default: the first iterative one).", flag_values=fl)
    flags.DEFINE_list("eps", [], "attack: eps values for the accuracy-vs-eps curve.",
                      flag_values=fl)
    flags.DEFINE_integer("num_images", 8, "attack: images in the PNG grid.", flag_values=fl)
    try:
        fl(argv)
    except (flags.UnrecognizedFlagError, flags.IllegalFlagValueError, ValueError, TypeError,
            KeyError, AttributeError) as e:
        raise SystemExit(f"advjax: {_explain_flag_error(e, argv)}")
    if fl.config is None or fl.workdir is None:
        raise SystemExit("advjax: --config and --workdir are required\n\n" + _usage())
    return fl


def _cmd_train(fl):
    from advjax import train
    result = train.train_and_evaluate(fl.config, fl.workdir)
    print(result.pop("table"))
    print(json.dumps(result, indent=2))


def _cmd_eval(fl):
    from advjax import train
    state, model = train.restore_state(fl.config, fl.workdir)
    result = train.evaluate_state(fl.config, state, model, fl.workdir, limit=fl.limit or None)
    print(result.pop("table"))
    print(json.dumps(result, indent=2))


def _cmd_attack(fl):
    import jax
    from advjax import data, evaluate, train
    config = fl.config
    if not config.eval.attacks:
        raise SystemExit("advjax attack: config.eval.attacks is empty; add an attack spec")
    specs = [dict(a) for a in config.eval.attacks]
    labels = [s.get("label", s["name"]) for s in specs]
    if fl.attack and fl.attack not in labels:
        raise SystemExit(f"advjax attack: --attack={fl.attack!r} is not in config.eval.attacks; "
                         f"valid: {labels}")
    # Default: the first iterative attack (a spec with "steps"), more telling than a single step.
    default = next((s for s in specs if "steps" in s), specs[0])
    spec = specs[labels.index(fl.attack)] if fl.attack else default
    state, model = train.restore_state(config, fl.workdir)
    x, y = data.load_numpy(config.data.name, "test", data_dir=config.data.data_dir,
                           limit=fl.limit or config.eval.get("limit") or 1000)
    paths = evaluate.attack_report(train.eval_logits_fn(model, state), x, y, spec, fl.workdir,
                                   key=jax.random.PRNGKey(config.seed + 2),
                                   eps_values=[float(e) for e in fl.eps] or None,
                                   num_images=fl.num_images,
                                   class_names=data.dataset_info(config.data.name).get("class_names"),
                                   batch_size=config.eval.batch_size)
    for p in paths:
        print(p)


def main(argv=None):
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] not in COMMANDS:
        sys.stderr.write(_usage())
        return 2
    cmd = argv.pop(1)
    fl = _parse(argv)
    {"train": _cmd_train, "eval": _cmd_eval, "attack": _cmd_attack}[cmd](fl)
    return 0


if __name__ == "__main__":
    sys.exit(main())
