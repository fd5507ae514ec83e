"""The few statistics the BabyLM tasks report, in numpy (no scipy or statsmodels at run time): OLS R² for
the reading task, Spearman's ρ for the wug tasks, Pearson's r."""
from __future__ import annotations

import numpy as np


def ols_r2(y, columns: list) -> float:
    """R² of the least-squares fit of y on an intercept and `columns` (each a vector as long as y): what
    statsmodels' `ols(...).fit().rsquared` reports for a model with a constant (1 - SSR / centred SST)."""
    y = np.asarray(y, dtype=np.float64)
    X = np.column_stack([np.ones_like(y)] + [np.asarray(c, dtype=np.float64) for c in columns])
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    centred = y - y.mean()
    return float(1.0 - resid @ resid / (centred @ centred))


def ranks(x) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (as scipy.stats.rankdata's default)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based positions start+1 .. end
    out = np.empty(len(x), dtype=np.float64)
    out[order] = np.repeat(avg, ends - starts)
    return out


def pearson(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / denom) if denom > 0 else float("nan")


def spearman(a, b) -> float:
    """Spearman's ρ: Pearson's r of the (tie-averaged) ranks."""
    return pearson(ranks(a), ranks(b))
