"""Transform quantization maths (Young, Zhe, Taubman, Girod, TPAMI 2021): pure tensor/array code.

A weight W (m x n; a conv's (out, in, kh, kw) read as out x in*kh*kw) is coded as
    W ~= U C        (or (U C)^T, see `as_matrix`)
with U an orthonormal decorrelating transform and C its coefficients, quantized row by row with an
integer bit-depth per row chosen by reverse water-filling. Choices, and why:

- Which side is transformed: the *smaller* dimension d = min(m, n). The vectors decorrelated are
  the d-dim columns of A (d x s, s = max(m, n) samples), so the covariance A A^T / s is estimated
  from at least as many samples as it has dimensions, and the transform -- which must be stored --
  holds d^2 numbers, never more than the m*n weights. For a conv that decorrelates the output
  channels whenever out <= in*kh*kw (every conv of a ResNet); for a ViT it is the embedding side
  (qkv, fc1, patch embedding: inputs; proj, fc2, head: outputs).
- The KLT is the SVD of A (no mean removal, i.e. the KLT of the second moments): A = U S V^T,
  C = U^T A, row i of C has s coefficients of variance lambda_i = S_i^2 / s. The SVD (not an
  eigendecomposition of A A^T) because it does not square the condition number.
- Reverse water-filling (Gaussian rate-distortion): D(theta) = sum_i min(theta, lambda_i),
  b_i = max(0, 1/2 log2(lambda_i / theta)). Integer bits by greedy marginal return under the
  high-rate model D_i(b) = lambda_i 4^-b: the budget is spent one bit at a time on the row whose
  next bit removes most distortion, which is an exact top-B selection of lambda_i 4^-b (one sort)
  and gives 0 bits to every row below the continuous water level (`allocate_bits`).
- With calibration data the variances are those seen at the layer's *output*: g_i lambda_i, with
  g_i = E[(f_i . x)^2] the input energy along the component (`Analysis.input_filters`) -- the
  paper's point that weights and activations must be judged jointly. A component the inputs
  never excite (g_i ~ 0: e.g. the patch embedding of a grey image replicated to RGB) then costs
  no bits. The transform itself stays the weights' KLT: the paper's activation-shaped transform
  needs the activation covariance's inverse square root stored beside it (n^2 numbers more),
  which a ViT's square layers cannot afford.
- The rows' quantizer: uniform midrise with 2^b levels (at 1 bit, +-step/2), step per row chosen
  by least squared error over a grid of clipping levels. A symmetric midtread quantizer (the
  zero level of `quantizers.py`) uses 2^b - 1 of its 2^b codes: none useful at 1 bit.
- Rows given 0 bits are dropped with their basis vectors (dimensionality reduction for free).
  The kept basis vectors are stored at 8 bits (per-vector scale) and the coefficients are then
  recomputed by least squares against the *quantized* transform, which absorbs the transform's
  rounding error entirely when every row is kept (U_q is square and invertible).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import brentq

MAX_COEFF_BITS = 8  # bits any one coefficient row may take (codes fit one byte before packing)
TRANSFORM_BITS = 8  # storage of the kept basis vectors (symmetric, one fp32 scale per vector)
# Clipping levels tried per row, as fractions of the row's largest |coefficient|: geometric, so
# the 1-2 bit rows (best clipped near 2 sigma, a fifth of the max) are sampled as finely as 8-bit.
CLIP_GRID = tuple(float(v) for v in np.geomspace(0.04, 1.0, 48))


def as_matrix(weight: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(A, transposed): the weight as a float64 d x s matrix with d <= s, transform side first.

    `transposed` is True when the input side (columns of the m x n view) is the transformed one.
    """
    w = weight.detach().to(torch.float64).reshape(weight.shape[0], -1)
    if w.shape[0] <= w.shape[1]:
        return w, False
    return w.t(), True


def from_matrix(
    a: torch.Tensor, transposed: bool, shape: torch.Size | tuple[int, ...]
) -> torch.Tensor:
    """Inverse of `as_matrix`: back to the weight's own shape."""
    return (a.t() if transposed else a).reshape(shape)


def klt(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(basis U, d x d orthonormal, columns by decreasing variance; variances lambda, (d,))."""
    u, s, _ = torch.linalg.svd(a.to(torch.float64), full_matrices=False)
    return u, s.pow(2) / a.shape[1]


@dataclass(frozen=True)
class Analysis:
    """One weight's KLT, computed once and shared by calibration and coding."""

    a: torch.Tensor  # d x s float64, as `as_matrix` gives it
    transposed: bool
    basis: torch.Tensor  # d x d, columns = components
    variances: torch.Tensor  # (d,), decreasing for the KLT; the rows' own for the identity
    identity: bool = False  # no transform: the rows of A coded as they are, nothing stored

    @classmethod
    def of(cls, weight: torch.Tensor, identity: bool = False) -> Analysis:
        a, transposed = as_matrix(weight.cpu())
        if identity:
            eye = torch.eye(a.shape[0], dtype=torch.float64)
            return cls(a, transposed, eye, a.pow(2).sum(dim=1) / a.shape[1], True)
        u, lam = klt(a)
        return cls(a, transposed, u, lam)

    def input_filters(self) -> torch.Tensor:
        """d x n_in, one unit vector per component in the layer's input space: the direction
        whose input energy E[(f_i . x)^2] scales component i's error at the layer's output.

        Input side transformed (W = C U^T): f_i = u_i, and the output error of any change to
        column i of C is exactly |change|^2 E[(u_i . x)^2]. Output side (W = U C): f_i = row i of
        C, normalised; exact for a dropped row (its whole pattern is lost), a first-order model
        for a quantized one (low-rate quantization error follows the row's own pattern).
        """
        if self.transposed:
            return self.basis.t().contiguous()
        c = self.basis.t() @ self.a
        return c / c.norm(dim=1, keepdim=True).clamp_min(1e-30)


def water_level(variances: np.ndarray, rate: float, max_bits: int = MAX_COEFF_BITS) -> float:
    """theta such that the rows' continuous bit-depths clip(1/2 log2(lambda/theta), 0, max_bits)
    average `rate` bits (reverse water-filling; the cap is the largest depth a row may take)."""
    lam = np.asarray(variances, dtype=np.float64)
    pos = lam[lam > 0]
    if not 0 < rate < max_bits or pos.size == 0:
        raise ValueError(f"rate={rate}: need 0 < rate < {max_bits} and a positive variance")
    target = rate * lam.size
    if pos.size * max_bits < target:  # even every positive row at the cap falls short
        raise ValueError(f"rate={rate}: more bits than {pos.size} non-zero rows can take")

    def excess(log_theta: float) -> float:
        bits = np.clip(0.5 * (np.log2(pos) - log_theta), 0.0, max_bits)
        return float(bits.sum() - target)

    hi = float(np.log2(pos.max()))  # level at the top variance: 0 bits everywhere
    lo = float(np.log2(pos.min())) - 2 * max_bits  # every row at the cap
    if excess(lo) == 0.0:
        return 2.0**lo
    return 2.0 ** brentq(excess, lo, hi, xtol=1e-12)


def continuous_bits(
    variances: np.ndarray, theta: float, max_bits: int = MAX_COEFF_BITS
) -> np.ndarray:
    """The reverse water-filling depths at level theta (real numbers)."""
    lam = np.asarray(variances, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.clip(0.5 * np.log2(lam / theta), 0.0, max_bits)


def budget_rows(rate: float, rows: int) -> int:
    """Row-bits the budget buys: rate x rows, exactly when that is an integer (always for integer
    rates), else its floor (rows of one layer hold equally many coefficients, so a fraction of a
    row-bit cannot be spent without splitting a row)."""
    return math.floor(rate * rows + 1e-9)


def _greedy_rows(lam: np.ndarray, max_bits: int) -> np.ndarray:
    """The rows of the greedy's candidate bits in the order it takes them: the k-th bit of row i
    removes distortion in proportion to lambda_i 4^-(k-1); one stable sort of those candidates
    (ties: lower k, then lower i, so each row's bits are a prefix) is the greedy's whole run."""
    k = np.arange(max_bits)
    gain = lam[:, None] * 4.0 ** (-k[None, :])  # (rows, max_bits)
    rows = np.broadcast_to(np.arange(lam.size)[:, None], gain.shape)
    order = np.lexsort((rows.ravel(), np.broadcast_to(k, gain.shape).ravel(), -gain.ravel()))
    return rows.ravel()[order]


def allocate_bits(variances: np.ndarray, rate: float, max_bits: int = MAX_COEFF_BITS) -> np.ndarray:
    """Integer bits per row, sum == `budget_rows(rate, rows)`, each in 0..max_bits.

    Greedy marginal return (`_greedy_rows`): taking the `budget` largest candidates is the
    greedy's answer. Every row whose variance is below the continuous water level gets 0 bits:
    all candidates taken are >= the smallest one taken, which is >= theta.
    """
    lam = np.asarray(variances, dtype=np.float64)
    if not 0 < rate <= max_bits:
        raise ValueError(f"rate={rate}: need 0 < rate <= {max_bits}")
    budget = budget_rows(rate, lam.size)
    taken = _greedy_rows(lam, max_bits)[:budget]
    return np.bincount(taken, minlength=lam.size).astype(np.int64)


def allocate_stored(
    variances: np.ndarray,
    total_bits: float,
    cols: int,
    kept_row_bits: int,
    fixed_bits: int = 0,
    max_bits: int = MAX_COEFF_BITS,
) -> np.ndarray:
    """Integer bits per row for a budget of `total_bits` *stored* bits: the greedy's longest run
    whose coefficients (cols per row-bit) plus side information fit, where every row that
    receives a bit costs `kept_row_bits` more (its basis vector, scale, step, depth) and
    `fixed_bits` are owed whatever is kept. The rows' depths are a prefix of `allocate_bits`'s
    order, so the same rate-distortion argument holds; a budget the side cannot fit codes to 0.
    """
    lam = np.asarray(variances, dtype=np.float64)
    order = _greedy_rows(lam, max_bits)
    first = np.zeros(order.size, dtype=np.int64)  # 1 where a candidate opens a new row
    first[np.unique(order, return_index=True)[1]] = 1
    taken = np.arange(1, order.size + 1)
    cost = taken * cols + np.cumsum(first) * kept_row_bits + fixed_bits
    fits = int(np.searchsorted(cost, total_bits, side="right"))  # cost is increasing
    return np.bincount(order[:fits], minlength=lam.size).astype(np.int64)


def quantize_rows(
    c: torch.Tensor, bits: torch.Tensor, clip_grid: tuple[float, ...] = CLIP_GRID
) -> tuple[torch.Tensor, torch.Tensor]:
    """Midrise uniform quantization of each row of `c` at its own depth.

    Returns (codes uint8 in [0, 2^b - 1], step per row float32); a 0-bit row gets codes 0 and
    step 0 (it reconstructs to zeros). Step = 2 * clip / 2^b, clip from `clip_grid` x max|row|,
    chosen per row by least squared error.
    """
    c = c.to(torch.float64)
    b = bits.to(torch.float64)[:, None]
    half = torch.where(b > 0, 2.0 ** (b - 1), torch.ones_like(b))  # 2^(b-1) levels per side
    amax = c.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
    best_err = torch.full_like(amax, float("inf"))
    best_step = torch.zeros_like(amax)
    for ratio in clip_grid:
        step = amax * ratio / half
        q = torch.floor(c / step).clamp(-half, half - 1)
        err = ((q + 0.5) * step - c).pow(2).sum(dim=1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_step = torch.where(better, step, best_step)
    q = torch.floor(c / best_step).clamp(-half, half - 1)
    codes = torch.where(b > 0, q + half, torch.zeros_like(q)).to(torch.uint8)
    step = torch.where(b[:, 0] > 0, best_step[:, 0], torch.zeros_like(best_step[:, 0]))
    return codes, step.float()


def dequantize_rows(codes: torch.Tensor, bits: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Inverse of `quantize_rows` (float32)."""
    half = torch.where(
        bits > 0, 2.0 ** (bits.float() - 1), torch.ones_like(bits, dtype=torch.float32)
    )
    values = (codes.float() - half[:, None] + 0.5) * step.float()[:, None]
    return torch.where(bits[:, None] > 0, values, torch.zeros_like(values))


def quantize_basis(
    u: torch.Tensor, bits: int = TRANSFORM_BITS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-column quantization of the basis: (codes int8 d x k, scale fp32 (k,))."""
    top = 2 ** (bits - 1) - 1
    scale = u.abs().amax(dim=0).clamp_min(1e-30) / top
    codes = torch.round(u / scale).clamp(-top, top).to(torch.int8)
    return codes, scale.float()


def dequantize_basis(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return codes.to(torch.float64) * scale.to(torch.float64)[None, :]


def pack_rows(codes: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Row i's codes at bits[i] bits each, rows in order, in one uint8 stream (no padding between
    rows): ceil(sum_i s * bits[i] / 8) bytes for a k x s code matrix."""
    c = codes.detach().cpu().numpy().astype(np.uint8)
    planes = np.unpackbits(c[:, :, None], axis=2, bitorder="little")  # (k, s, 8), LSB first
    keep = np.arange(8)[None, None, :] < bits.cpu().numpy()[:, None, None]
    stream = planes[np.broadcast_to(keep, planes.shape)]
    return torch.from_numpy(np.packbits(stream, bitorder="little"))


def unpack_rows(packed: torch.Tensor, bits: torch.Tensor, cols: int) -> torch.Tensor:
    """Inverse of `pack_rows`: uint8 codes, k x cols (0 for 0-bit rows)."""
    b = bits.cpu().numpy()
    keep = np.broadcast_to(np.arange(8)[None, None, :] < b[:, None, None], (b.size, cols, 8))
    planes = np.zeros((b.size, cols, 8), dtype=np.uint8)
    planes[keep] = np.unpackbits(packed.cpu().numpy(), count=int(b.sum()) * cols, bitorder="little")
    return torch.from_numpy(np.packbits(planes, axis=2, bitorder="little")[:, :, 0])


def packed_bytes(rows_bits: int, cols: int) -> int:
    """Bytes `pack_rows` makes from rows totalling `rows_bits` bits of `cols` coefficients each."""
    return (rows_bits * cols + 7) // 8
