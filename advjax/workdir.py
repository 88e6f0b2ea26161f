"""What a run directory (workdir) guarantees: one experiment, one writer, no lost history.

  * `check_writable(workdir)`: a path that is a file, or a directory this user cannot write, is a
    one-line `WorkdirError` before anything is computed.
  * `Lock`: `advjax train` holds an exclusive `fcntl` lock on WORKDIR/.lock while it runs; a second
    run on the same workdir fails at once naming the holder's pid. The kernel releases the lock when
    its process dies, so `kill -9` never leaves a stale lock behind.
  * `config_changes` / `check_config`: the workdir belongs to the experiment of its config.json. A
    run whose config differs from the stored one is refused with the changed keys, except the keys
    that may change when a run resumes (`RESUMABLE_KEYS`); with `allow_change=True` the run goes on
    and the stored config is kept beside the new one (`config.before-step<N>.json`). A key that the
    code added to `default_config()` after the workdir was written, and that still has its default
    value, is not a change.
  * `MetricsLog`: metrics.jsonl is append-only. When a run resumes, the rows after the resumed
    checkpoint (which will be recomputed) and a torn last line (a kill in the middle of a write) are
    cut by writing a new file and renaming it over the old one (`os.replace`, atomic), so a kill at any
    moment leaves either the old or the new history, never an empty or half-written file.
  * `eval_paths`: an evaluation never overwrites a fuller one. eval.json / eval.md hold the latest
    evaluation unless the stored one has more examples or an attack column the new one lacks; the new
    one then goes beside it, named by its size (eval.n<N>.json / .md).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import tempfile
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

#: Keys that may differ from the stored config when a run resumes: they change how the run is
#: watched, saved, placed or evaluated, not what it computes. `train.epochs` extends (or shortens) a
#: run; the device count and the process topology are free because every device count follows the
#: same trajectory (advjax.train, item 9 of issue 13); so does train.seeds_mode (how the replicas
#: of a multi-seed run are stepped; train.seeds itself may not change). A prefix ending in "."
#: covers a section.
RESUMABLE_KEYS = ("eval.", "distributed.", "data.data_dir", "train.epochs", "train.progress",
                  "train.log_every", "train.checkpoint_every_steps", "train.keep_checkpoints",
                  "train.num_devices", "train.seeds_mode", "train.collapse_")

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"


class WorkdirError(RuntimeError):
    """The workdir cannot be used as asked (not a directory, not writable, locked, or another
    experiment's)."""


def _warn(message: str) -> None:
    print(f"advjax: warning: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# The directory itself
# ------------------------------------------------------------------------------------------------

def check_writable(workdir: str) -> str:
    """Creates `workdir` if needed and checks that files can be created in it; returns its path."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"workdir {workdir!r} is a file, not a directory")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"cannot create workdir {workdir!r}: {e.strerror}") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise WorkdirError(f"workdir {workdir!r} is not writable by this user")
    return workdir


class Lock:
    """An exclusive, non-blocking `fcntl.flock` on WORKDIR/.lock, holding the owner's pid and host.

    `acquire()` raises WorkdirError naming the holder when another process has it. Use as a context
    manager, or call `release()`.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._file = None

    def acquire(self) -> "Lock":
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                f.close()
                raise
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise WorkdirError(
                f"workdir {os.path.dirname(self.path)!r} is in use by another advjax train run "
                f"({holder}); wait for it to finish or stop it first") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# ------------------------------------------------------------------------------------------------
# The stored config
# ------------------------------------------------------------------------------------------------

def config_as_dict(config) -> Dict[str, Any]:
    """The config as config.json stores it (ml-collections' JSON: tuples become lists)."""
    return json.loads(config.to_json_best_effort())


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{"train.epochs": 3, ...}: nested dicts flattened to dotted keys; lists are leaves."""
    out: Dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


_ABSENT = "<absent>"


def config_changes(new: Mapping[str, Any], stored: Mapping[str, Any],
                   defaults: Mapping[str, Any]) -> List[Tuple[str, Any, Any]]:
    """(key, stored value, new value) for every key that differs, as flattened dicts.

    A key of `new` missing from `stored` is not a change when `defaults` (the current
    default_config) has it with the same value: the code added it after the workdir was written.
    """
    new, stored, defaults = flatten(new), flatten(stored), flatten(defaults)
    changes = []
    for key in sorted(set(new) | set(stored)):
        if key in new and key in stored:
            if new[key] != stored[key]:
                changes.append((key, stored[key], new[key]))
        elif key in new:
            if not (key in defaults and defaults[key] == new[key]):
                changes.append((key, _ABSENT, new[key]))
        else:
            changes.append((key, stored[key], _ABSENT))
    return changes


def is_resumable_key(key: str) -> bool:
    return any(key.startswith(k) if k.endswith((".", "_")) else key == k for k in RESUMABLE_KEYS)


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value) if value is not _ABSENT else _ABSENT
    return text if len(text) <= width else text[:width - 3] + "..."


def format_changes(changes: Iterable[Tuple[str, Any, Any]]) -> str:
    return "\n".join(f"  {k}: {_short(old)} -> {_short(new)}" for k, old, new in changes)


def read_stored_config(workdir: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError:
            raise WorkdirError(f"{path} is not valid JSON; restore it or move it aside") from None


#: Keys whose change makes an evaluation of the workdir's checkpoint meaningless: another model
#: cannot be restored, another dataset would be misleading. Other changes only warn in eval/attack.
EVAL_IDENTITY_KEYS = ("model.", "data.name")


def _is_eval_identity_key(key: str) -> bool:
    return any(key.startswith(k) if k.endswith(".") else key == k for k in EVAL_IDENTITY_KEYS)


def check_config(workdir: str, config, defaults, *, allow_change: bool = False,
                 command: str = "train") -> List[Tuple[str, Any, Any]]:
    """Compares `config` with workdir's config.json; returns the changes the run may go on with.

    command "train": raises WorkdirError listing the changed keys when some are not resumable
    (`RESUMABLE_KEYS`). command "eval" (eval / attack, which only read the checkpoint): raises when
    `EVAL_IDENTITY_KEYS` changed (the model, the dataset) and warns about other changes. Nothing is
    raised with allow_change. Returns [] when there is no stored config.
    """
    stored = read_stored_config(workdir)
    if stored is None:
        return []
    changes = config_changes(config_as_dict(config), stored, config_as_dict(defaults))
    refused = [c for c in changes if not is_resumable_key(c[0])]
    if command != "train":
        if refused and not allow_change:
            others = [c for c in refused if not _is_eval_identity_key(c[0])]
            if others:
                _warn(f"evaluating {workdir!r}, trained with another config in\n"
                      f"{format_changes(others)}")
        refused = [c for c in refused if _is_eval_identity_key(c[0])]
    if refused and not allow_change:
        raise WorkdirError(
            f"workdir {workdir!r} holds another experiment: its config.json differs in\n"
            f"{format_changes(refused)}\n"
            f"Use a new --workdir, or pass --allow_config_change to {command} with the new config "
            f"anyway" + (" (the stored config is kept beside it)." if command == "train" else "."))
    return changes


def write_config(workdir: str, config, *, previous_step: Optional[int] = None) -> None:
    """Writes config.json atomically; with `previous_step`, the stored one is first renamed to
    config.before-step<N>.json (config.before-step<N>.<k>.json if that exists)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if previous_step is not None and os.path.exists(path):
        keep = os.path.join(workdir, f"config.before-step{previous_step}.json")
        k = 1
        while os.path.exists(keep):
            keep = os.path.join(workdir, f"config.before-step{previous_step}.{k}.json")
            k += 1
        os.replace(path, keep)
        _warn(f"the config changed; the previous one is kept as {keep}")
    atomic_write(path, config.to_json_best_effort(indent=2))


def atomic_write(path: str, text: str) -> None:
    """Writes `text` to a temporary file in the same directory, fsyncs it and renames it to `path`."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-",
                               suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------------------------------
# metrics.jsonl
# ------------------------------------------------------------------------------------------------

def read_metrics(path: str) -> Tuple[List[Dict[str, Any]], bool]:
    """(rows, damaged): the rows of a metrics.jsonl file; a torn or unparsable line is dropped with a
    warning (damaged = True). A last line without its newline is kept if it parses."""
    if not os.path.exists(path):
        return [], False
    with open(path) as f:
        text = f.read()
    lines = text.split("\n")
    rows, damaged = [], not text.endswith("\n") and bool(text)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "step" not in row:
                raise ValueError("not a metrics row")
        except ValueError:
            where = "its last line" if i >= len(lines) - 2 else f"line {i + 1}"
            _warn(f"{path}: dropped {where}, which is not a complete metrics row "
                  f"(a write cut short?): {line[:80]!r}")
            damaged = True
            continue
        rows.append(row)
    return rows, damaged


class MetricsLog:
    """metrics.jsonl: append-only, one JSON object per logged step; see the module docstring.

    `MetricsLog(path, resume_step)` keeps the rows of steps <= resume_step (the later ones will be
    recomputed identically) and rewrites the file atomically only if something must go.
    """

    def __init__(self, path: str, *, resume_step: int = 0):
        self.path = path
        rows, damaged = read_metrics(path)
        kept = [r for r in rows if r["step"] <= resume_step]
        if damaged or len(kept) < len(rows):
            atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))
        self.rows_kept = kept

    def append(self, row: Mapping[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(row)) + "\n")
            f.flush()
            os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------------
# Evaluation files
# ------------------------------------------------------------------------------------------------

def _is_fuller(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """True when `old` has more examples than `new`, or a column (attack, or the AutoAttack
    result) that `new` lacks."""
    return old.get("n", 0) > new.get("n", 0) or any(
        (k.startswith("attack/") or k == "autoattack") and k not in new for k in old)


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def eval_paths(workdir: str, result: Mapping[str, Any]) -> Tuple[str, str]:
    """(json path, markdown path) where an evaluation `result` (with "n" and "attack/..." keys) may
    be written without replacing a fuller one: eval.json / eval.md, unless the stored eval.json has
    more examples or a column the new result lacks; then eval.n<N>.json / .md (eval.n<N>.<time>.*
    if that too is fuller)."""
    candidates = ["eval", f"eval.n{result.get('n', 0)}",
                  f"eval.n{result.get('n', 0)}.{time.strftime('%Y%m%d-%H%M%S')}"]
    for stem in candidates:
        path = os.path.join(workdir, stem + ".json")
        old = _read_json(path) if os.path.exists(path) else None
        if old is None or not _is_fuller(old, result):
            break
    if stem != "eval":
        _warn(f"{os.path.join(workdir, 'eval.json')} holds a fuller evaluation (more examples or "
              f"more attacks); this one goes to {path}")
    return path, os.path.join(workdir, stem + ".md")
