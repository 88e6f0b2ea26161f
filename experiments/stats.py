"""Paired statistics for the studies (issue 14): what every compared pair of a study reports.

For two methods (or attacks) A and B evaluated on the same test images:

- `mcnemar(correct_a, correct_b)`: the exact McNemar test on per-example correctness. Of the n
  images, b are right under A and wrong under B, c the reverse; under H0 (A and B equally accurate)
  each of the m = b + c discordant images is b-type with probability 1/2, so
  p = min(1, 2 P[X <= min(b, c)]), X ~ Binomial(m, 1/2) (McNemar 1947; the exact conditional form,
  as `scipy.stats.binomtest(b, b + c, 0.5)`).
- `seed_difference(values_a, values_b)`: the mean difference of a per-seed statistic (accuracy of
  the model trained with seed s) with a Student-t 95% interval: paired by seed (t on the
  differences, n - 1 degrees of freedom) when both have the same seeds, else Welch's interval.
  This is the test of a claim about training *methods*: McNemar conditions on the trained weights
  and only says that two particular models differ, the seeds carry the training noise.
- `detectable_difference(n, p_discordant)`: the smallest accuracy difference |p_b - p_c| a
  two-sided McNemar test at level alpha detects with the given power on n paired images whose
  discordant fraction is p_discordant (normal approximation of Connor 1987, Biometrics 43:207):
  n = (z_{1-alpha/2} sqrt(psi) + z_power sqrt(psi - delta^2))^2 / delta^2, solved for delta.
- `compare(label_a, label_b, correct_a, correct_b)` runs the three on per-example results of one
  or several seeds and `table(rows)` prints them: one row per pair, saying whether McNemar was run
  per seed or pooled over seeds.

Only NumPy and the standard library at run time (the Student-t quantile is computed here from the
regularized incomplete beta function); tests check every number against scipy.stats.
Differences are fractions (0.012 = 1.2 points); `table` prints them in percentage points.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np

# Above this many discordant pairs the exact tail is summed with big integers of ~m/3 digits; the
# chi-square form with continuity correction is then within 1e-3 relative of it anyway.
_EXACT_MAX_DISCORDANT = 50_000

PerSeed = Union[Mapping[Any, Any], Sequence[Any], np.ndarray]


# ------------------------------------------------------------------------------------------------
# McNemar
# ------------------------------------------------------------------------------------------------

def _as_correct(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of per-example correctness, got shape "
                         f"{a.shape}")
    if a.dtype != bool:
        if not np.all((a == 0) | (a == 1)):
            raise ValueError(f"{name} must be boolean (or 0/1) per-example correctness")
        a = a.astype(bool)
    return a


def _binomial_two_sided_half(k: int, m: int) -> float:
    """P-value of the exact two-sided binomial test of k successes in m trials at p = 1/2:
    min(1, 2 P[X <= min(k, m - k)]), summed exactly in integers."""
    k = min(k, m - k)
    term, total = 1, 1  # C(m, 0)
    for i in range(k):
        term = term * (m - i) // (i + 1)
        total += term
    return min(1.0, (2 * total) / (1 << m))


def mcnemar(correct_a, correct_b) -> Dict[str, Any]:
    """Exact McNemar test of two paired per-example correctness arrays (same images, same order).

    Returns dict(p, b, c, n, ...): b = #(A right, B wrong), c = #(A wrong, B right), n images,
    the two-sided p-value (exact binomial for up to 50,000 discordant pairs, the chi-square with
    continuity correction beyond), the accuracies and difference = accuracy A - accuracy B
    = (b - c) / n, and `method`.
    """
    a = _as_correct(correct_a, "correct_a")
    b_arr = _as_correct(correct_b, "correct_b")
    if a.shape != b_arr.shape:
        raise ValueError(f"correct_a and correct_b must pair the same examples, got shapes "
                         f"{a.shape} and {b_arr.shape}")
    n = int(a.size)
    if n == 0:
        raise ValueError("correct_a is empty")
    b = int(np.sum(a & ~b_arr))
    c = int(np.sum(~a & b_arr))
    m = b + c
    if m == 0:
        p, method = 1.0, "exact binomial (no discordant pairs)"
    elif m <= _EXACT_MAX_DISCORDANT:
        p, method = _binomial_two_sided_half(b, m), "exact binomial"
    else:
        chi2 = (abs(b - c) - 1) ** 2 / m
        p, method = math.erfc(math.sqrt(chi2 / 2)), "chi-square, continuity corrected"
    return {"p": p, "b": b, "c": c, "n": n, "accuracy_a": float(a.mean()),
            "accuracy_b": float(b_arr.mean()), "difference": (b - c) / n,
            "p_discordant": m / n, "method": method}


# ------------------------------------------------------------------------------------------------
# Student t without scipy
# ------------------------------------------------------------------------------------------------

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz method)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                    -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            return h
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P[T <= t] for Student's t with df > 0 degrees of freedom:
    1 - I_{df / (df + t^2)}(df / 2, 1 / 2) / 2 for t >= 0, by symmetry below."""
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_ppf(q: float, df: float) -> float:
    """The q-quantile of Student's t with df degrees of freedom (bisection on `t_cdf`)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# ------------------------------------------------------------------------------------------------
# Differences over seeds
# ------------------------------------------------------------------------------------------------

def _per_seed(values: PerSeed, name: str) -> Dict[Any, float]:
    """{seed: value} from a mapping, or from a sequence read as seeds 0, 1, 2, ..."""
    if isinstance(values, Mapping):
        out = {k: float(v) for k, v in values.items()}
    else:
        arr = np.asarray(values, dtype=float)
        if arr.ndim != 1:
            raise ValueError(f"{name} must be one value per seed (a mapping or a 1-D sequence), "
                             f"got shape {arr.shape}")
        out = {i: float(v) for i, v in enumerate(arr)}
    if not out:
        raise ValueError(f"{name} is empty: one value per seed is needed")
    if not all(math.isfinite(v) for v in out.values()):
        raise ValueError(f"{name} has non-finite values: {out}")
    return out


def seed_difference(values_a: PerSeed, values_b: PerSeed, *,
                    paired: Optional[bool] = None) -> Dict[str, Any]:
    """Mean of A - B over seeds with a Student-t 95% interval.

    values_*: one number per seed (e.g. the accuracy of the model trained with that seed), as a
      mapping {seed: value} or a sequence read as seeds 0, 1, ...
    paired: None (default) pairs by seed when both have the same seeds (t on the per-seed
      differences, n - 1 degrees of freedom), else Welch's unpaired interval; True requires the
      same seeds; False forces Welch.

    Returns dict(mean, ci95=(lo, hi), paired, n_a, n_b, df, se, t, p, method, note). With one seed
    (or one per side unpaired) there is no interval: ci95 = (nan, nan). When every seed gives the
    same difference the sample spread is 0 and the interval degenerates to (mean, mean); t and p are
    then undefined (nan), not "infinitely significant".
    """
    a, b = _per_seed(values_a, "values_a"), _per_seed(values_b, "values_b")
    same_seeds = set(a) == set(b)
    if paired is None:
        paired = same_seeds
    if paired and not same_seeds:
        raise ValueError(f"paired=True needs the same seeds, got {sorted(a)} and {sorted(b)}")
    nan = float("nan")
    out: Dict[str, Any] = {"paired": bool(paired), "n_a": len(a), "n_b": len(b),
                           "seeds": sorted(a) if paired else None, "note": ""}
    if paired:
        d = np.array([a[s] - b[s] for s in sorted(a)])
        n = len(d)
        mean = float(d.mean())
        out.update(mean=mean, method=f"paired t over {n} seed(s)")
        if n < 2:
            out.update(ci95=(nan, nan), df=nan, se=nan, t=nan, p=nan,
                       note="one seed: no interval")
            return out
        df = n - 1
        se = float(d.std(ddof=1)) / math.sqrt(n)
    else:
        xa, xb = np.array(list(a.values())), np.array(list(b.values()))
        mean = float(xa.mean() - xb.mean())
        out.update(mean=mean, method=f"Welch t ({len(xa)} vs {len(xb)} seeds)")
        if len(xa) < 2 or len(xb) < 2:
            out.update(ci95=(nan, nan), df=nan, se=nan, t=nan, p=nan,
                       note="fewer than 2 seeds on a side: no interval")
            return out
        va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
        se = math.sqrt(va + vb)
        df = ((va + vb) ** 2 / (va ** 2 / (len(xa) - 1) + vb ** 2 / (len(xb) - 1))
              if va + vb > 0 else float(len(xa) + len(xb) - 2))
    if se <= 1e-12 * max(1.0, abs(mean)):  # the same difference in every seed, up to rounding
        out.update(ci95=(mean, mean), df=float(df), se=0.0, t=nan, p=nan,
                   note="the same difference in every seed: zero spread, t undefined")
        return out
    half = t_ppf(0.975, df) * se
    t = mean / se
    out.update(ci95=(mean - half, mean + half), df=float(df), se=se, t=t,
               p=2.0 * (1.0 - t_cdf(abs(t), df)))
    return out


# ------------------------------------------------------------------------------------------------
# Power
# ------------------------------------------------------------------------------------------------

def detectable_difference(n: int, p_discordant: float, alpha: float = 0.05,
                          power: float = 0.8) -> float:
    """Smallest accuracy difference delta = |p_b - p_c| (a fraction) that a two-sided McNemar test
    at level `alpha` detects with probability `power` on n paired examples with discordant
    fraction psi = p_discordant = p_b + p_c.

    Solves sqrt(n) delta = z_{1-alpha/2} sqrt(psi) + z_power sqrt(psi - delta^2) (Connor 1987's
    sample size, inverted) for delta in (0, psi]. nan when even delta = psi (every discordant pair
    on one side) is not detectable, e.g. psi = 0 or n * psi of a few pairs.
    """
    if not (isinstance(n, (int, np.integer)) and n > 0):
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not 0.0 <= p_discordant <= 1.0:
        raise ValueError(f"p_discordant must be in [0, 1], got {p_discordant}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be in (0, 1), got {power}")
    psi = float(p_discordant)
    if psi == 0.0:
        return float("nan")
    normal = statistics.NormalDist()
    za, zb = normal.inv_cdf(1.0 - alpha / 2.0), normal.inv_cdf(power)
    root_n = math.sqrt(n)

    def gap(delta):  # increasing in delta
        return root_n * delta - za * math.sqrt(psi) - zb * math.sqrt(max(psi - delta * delta, 0.0))

    if gap(psi) < 0.0:
        return float("nan")
    lo, hi = 0.0, psi
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if gap(mid) < 0.0:
            lo = mid
        else:
            hi = mid
    return hi


# ------------------------------------------------------------------------------------------------
# One row per compared pair
# ------------------------------------------------------------------------------------------------

def _per_seed_arrays(correct, name: str) -> Dict[Any, np.ndarray]:
    """{seed: 1-D bool array} from one array (one seed, key 0), a 2-D array (rows = seeds 0, 1,
    ...), a sequence of arrays, or a mapping {seed: array}."""
    if isinstance(correct, Mapping):
        out = {k: _as_correct(v, f"{name}[{k!r}]") for k, v in correct.items()}
    else:
        arr = correct if isinstance(correct, np.ndarray) else None
        if arr is not None and arr.ndim == 1:
            out = {0: _as_correct(arr, name)}
        elif arr is not None and arr.ndim == 2:
            out = {i: _as_correct(r, f"{name}[{i}]") for i, r in enumerate(arr)}
        else:
            seq = list(correct)
            if seq and np.ndim(seq[0]) == 0:  # a plain list of per-example values
                out = {0: _as_correct(np.asarray(seq), name)}
            else:
                out = {i: _as_correct(r, f"{name}[{i}]") for i, r in enumerate(seq)}
    if not out:
        raise ValueError(f"{name} is empty")
    sizes = {v.size for v in out.values()}
    if len(sizes) != 1:
        raise ValueError(f"{name}: every seed must cover the same examples, got sizes {sizes}")
    return out


def compare(label_a: str, label_b: str, correct_a, correct_b, *, pooled: bool = False,
            alpha: float = 0.05, power: float = 0.8) -> Dict[str, Any]:
    """Everything a study reports for the pair (A, B), from per-example correctness.

    correct_*: one seed's 1-D boolean array, or several seeds' as a mapping {seed: array}, a 2-D
      array (rows = seeds 0, 1, ...) or a sequence of arrays; the examples (test images) must be
      the same for every seed and both sides.
    pooled: McNemar on the (seed, image) pairs of the common seeds concatenated (pairs are then not
      independent across seeds: images recur) instead of one test per seed (default).

    Returns a row for `table`: accuracies (mean over seeds), "mcnemar" (one dict per common seed,
    or one pooled dict), "mcnemar_scope" (what was run, in words), "seeds" = `seed_difference` of
    the per-seed accuracies, and "detectable" = `detectable_difference` at the per-test n and the
    observed discordant fraction (mean over the tests).
    """
    ca, cb = _per_seed_arrays(correct_a, "correct_a"), _per_seed_arrays(correct_b, "correct_b")
    n_a, n_b = next(iter(ca.values())).size, next(iter(cb.values())).size
    if n_a != n_b:
        raise ValueError(f"correct_a and correct_b must cover the same examples, got {n_a} and "
                         f"{n_b} per seed")
    common = [s for s in ca if s in cb]
    if not common:
        raise ValueError(f"correct_a and correct_b share no seed ({sorted(ca)} vs {sorted(cb)}): "
                         f"McNemar needs the same seed's models on the same images")
    if pooled and len(common) > 1:
        tests = {"pooled": mcnemar(np.concatenate([ca[s] for s in common]),
                                   np.concatenate([cb[s] for s in common]))}
        scope = f"pooled over {len(common)} seeds ({len(common)} x {n_a} pairs)"
    else:
        tests = {s: mcnemar(ca[s], cb[s]) for s in common}
        scope = ("one seed" if len(common) == 1 else f"per seed ({len(common)} seeds)") + \
            f", n = {n_a}"
    psi = float(np.mean([t["p_discordant"] for t in tests.values()]))
    n_test = next(iter(tests.values()))["n"]
    acc_a = {s: float(v.mean()) for s, v in ca.items()}
    acc_b = {s: float(v.mean()) for s, v in cb.items()}
    return {"a": label_a, "b": label_b, "n": n_a,
            "accuracy_a": float(np.mean(list(acc_a.values()))),
            "accuracy_b": float(np.mean(list(acc_b.values()))),
            "accuracy_a_per_seed": acc_a, "accuracy_b_per_seed": acc_b,
            "mcnemar": tests, "mcnemar_scope": scope,
            "seeds": seed_difference(acc_a, acc_b),
            "detectable": detectable_difference(n_test, psi, alpha, power),
            "alpha": alpha, "power": power}


def _fmt_p(p: float) -> str:
    return "nan" if math.isnan(p) else (f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}")


def _pts(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:+.2f}"


def table(rows: Sequence[Dict[str, Any]]) -> str:
    """Markdown table of `compare` rows; accuracies in %, differences in percentage points
    (A - B: negative = A lower)."""
    head = ["A", "B", "acc. A (%)", "acc. B (%)", "McNemar: b / c, p", "tested",
            "mean A - B over seeds [95% CI] (points)", "smallest detectable (points)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---:|---:|---|---|---|---:|"]
    for r in rows:
        tests = r["mcnemar"]
        mc = "; ".join((f"{k}: " if len(tests) > 1 else "") +
                       f"{t['b']} / {t['c']}, p = {_fmt_p(t['p'])}" for k, t in tests.items())
        s = r["seeds"]
        lo, hi = s["ci95"]
        diff = f"{_pts(s['mean'])} [{_pts(lo)}, {_pts(hi)}]" + \
            (f" ({s['method']})" if not s["note"] else f" ({s['note']})")
        det = r["detectable"]
        lines.append("| " + " | ".join([
            r["a"], r["b"], f"{100 * r['accuracy_a']:.2f}", f"{100 * r['accuracy_b']:.2f}", mc,
            r["mcnemar_scope"], diff, "n/a" if math.isnan(det) else f"{100 * det:.2f}"]) + " |")
    return "\n".join(lines) + "\n"


def explain() -> str:
    """One paragraph for a results file: what the table's columns mean."""
    return ("b = images only A gets right, c = only B; McNemar's exact two-sided p conditions on "
            "the trained weights. The interval is a Student-t 95% interval of the mean per-seed "
            "difference (paired by seed), the test of a claim about training methods. 'Smallest "
            "detectable' is the accuracy difference a McNemar test at this n and this discordance "
            "detects with 80% power at alpha 0.05 (Connor 1987).")


__all__ = ["mcnemar", "seed_difference", "detectable_difference", "compare", "table", "explain",
           "t_cdf", "t_ppf"]
