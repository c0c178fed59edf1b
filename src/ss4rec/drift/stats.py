"""Distances between count distributions, as used by the drift report.

    >>> js_divergence(np.array([1, 0]), np.array([0, 1]))
    1.0
    >>> ks_from_histograms(np.array([2, 0, 0]), np.array([0, 0, 2]))
    1.0
"""

from __future__ import annotations

import numpy as np


def _normalised(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total > 0 else counts


def _aligned(p_counts: np.ndarray, q_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both count vectors as floats of one length, the shorter padded with zeros."""
    size = max(len(p_counts), len(q_counts))
    p, q = np.zeros(size), np.zeros(size)
    p[: len(p_counts)] = p_counts
    q[: len(q_counts)] = q_counts
    return p, q


def js_divergence(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """Jensen–Shannon divergence (base 2, so in [0, 1]) between two count vectors.

    The shorter vector is padded with zeros (categories it never saw). NaN if either is empty.
    """
    p, q = _aligned(p_counts, q_counts)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p, q = _normalised(p), _normalised(q)
    m = (p + q) / 2

    def kl_to_m(x):  # sum x log2(x/m) over x > 0 (there m > 0 too)
        keep = x > 0
        return float(np.sum(x[keep] * np.log2(x[keep] / m[keep])))

    return float(min(max(0.5 * kl_to_m(p) + 0.5 * kl_to_m(q), 0.0), 1.0))


def ks_from_histograms(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """Two-sample Kolmogorov–Smirnov statistic from counts over the same ordered bins.

    ``max |F_p - F_q|`` over bin boundaries: exact for discrete values binned one per bin
    (activity counts); for binned continuous values (gaps) a lower bound of the exact
    statistic that is off by at most the largest single-bin mass. NaN if either is empty.
    """
    p, q = _aligned(p_counts, q_counts)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    return float(np.max(np.abs(np.cumsum(_normalised(p)) - np.cumsum(_normalised(q)))))


def sampling_js(p_counts: np.ndarray, n_reference: int, n_sample: int, repeats: int = 5, seed: int = 0) -> float:
    """Mean JS divergence between two samples of sizes ``n_reference`` and ``n_sample``
    drawn from the same distribution ``p_counts`` — the divergence that sampling noise
    alone produces (the "noise floor" a window's popularity divergence is compared with).
    """
    p = _normalised(p_counts)
    if p.sum() <= 0 or n_sample <= 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    values = [js_divergence(rng.multinomial(n_reference, p), rng.multinomial(n_sample, p))
              for _ in range(repeats)]
    return float(np.mean(values))
