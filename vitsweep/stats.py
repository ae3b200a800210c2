"""The statistics a 1-point decision needs, as pure numpy/scipy: a Wilson interval per accuracy,
and per-image correctness flags packed for storage so that two models can be compared on the same
images (exact McNemar, a paired difference).

Why apart from `measure.accuracy`: the report (track/) reads stored flags and pairs front members
with the baseline; it must not import the measuring room (torch) to do so.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
# The user attr holding a trial's per-image test-split correctness (`pack_flags`, split order).
TEST_FLAGS_KEY = "test_correct"


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of the proportion k/n (scipy's; better than Wald near 0 and 1)."""
    if n <= 0:
        raise ValueError(f"wilson: n={n} images; need at least one")
    from scipy.stats import binomtest  # 1 s to import: every CLI start reads this module

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def accuracy_summary(flags: np.ndarray, prefix: str = "accuracy") -> dict[str, float | int]:
    """`{prefix}`, `{prefix}_lo`, `{prefix}_hi` (95% Wilson) and `{prefix}_n` (images)."""
    n, k = len(flags), int(np.count_nonzero(flags))
    lo, hi = wilson(k, n)
    return {prefix: k / n, f"{prefix}_lo": lo, f"{prefix}_hi": hi, f"{prefix}_n": n}


def pack_flags(flags: np.ndarray) -> str:
    """Per-image flags as base64 of their packed bits (7,000 images: ~1.2 kB in a user attr)."""
    return base64.b64encode(np.packbits(np.asarray(flags, dtype=bool)).tobytes()).decode("ascii")


def unpack_flags(text: str, n: int) -> np.ndarray:
    """Inverse of `pack_flags` for `n` images."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))
    if len(bits) < n or len(bits) >= n + 8:
        raise ValueError(f"unpack_flags: {len(bits)} bits cannot hold exactly {n} flags")
    return bits[:n].astype(bool)


@dataclass(frozen=True)
class Paired:
    """Model A vs model B on the same n images: the accuracy difference A - B and its interval.

    Only discordant images carry information (McNemar): `a_only` images A gets right and B
    wrong, `b_only` the reverse. Given d = a_only + b_only, a_only ~ Binomial(d, p) and the
    difference is (d/n)(2p - 1); the interval maps the exact (Clopper-Pearson) interval of p
    onto that line, and `p_value` is the exact McNemar test of p = 1/2.
    """

    n: int
    a_only: int
    b_only: int
    diff: float  # accuracy(A) - accuracy(B), 0..1 scale
    lo: float
    hi: float
    p_value: float


def paired_difference(a: np.ndarray, b: np.ndarray, confidence: float = CONFIDENCE) -> Paired:
    """A - B on the same images (flags in the same order), with an exact McNemar interval."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired_difference: need equal 1-D flag arrays, not {a.shape}, {b.shape}")
    n = len(a)
    a_only = int(np.count_nonzero(a & ~b))
    b_only = int(np.count_nonzero(~a & b))
    d = a_only + b_only
    if d == 0:  # the two models agree on every image: the difference is exactly zero
        return Paired(n, 0, 0, 0.0, 0.0, 0.0, 1.0)
    from scipy.stats import binomtest

    test = binomtest(a_only, d, 0.5)
    ci = test.proportion_ci(confidence_level=confidence, method="exact")
    scale = d / n
    return Paired(
        n=n,
        a_only=a_only,
        b_only=b_only,
        diff=(a_only - b_only) / n,
        lo=scale * (2.0 * float(ci.low) - 1.0),
        hi=scale * (2.0 * float(ci.high) - 1.0),
        p_value=float(test.pvalue),
    )
