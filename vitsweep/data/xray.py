"""Synthetic 3-D X-ray views of an IC package's solder-bump array (the paper's domain).

SYNTHETIC DATA: procedurally rendered, not scans of real parts. It exists so that a fresh machine
has an inspection-like task with no download; numbers on it say nothing about real packages.

Each sample is a stack of depth slices (channels) through a flip-chip joint layer, as a
laminography/CT reconstruction would give: slice 0 is the substrate pad side, the middle slice
cuts the bumps' equator, the last slice is the die side. Every slice is a slab average over its
depth range, so `slices=1` is a plain 2-D radiograph (all depths summed). Several defects live at
one depth only, which is what makes the depth channels worth having:

  good        nothing wrong (small voids below the reject size still occur: they are normal)
  void        large gas voids in the middle of 2-3 bumps (middle slice)
  bridge      solder bridging 2-3 bumps to a neighbour around the equator (mostly middle slice)
  missing     2-3 bumps absent; only their copper pads remain (all slices, strongest mid)
  non_wet     head-in-pillow / non-wet: an air gap between pad and ball, 2-3 bumps (pad slice)
  misaligned  die shifted against the substrate: bumps lean, so slices disagree on position
  crack       fatigue cracks along the die-side interface, entering from the edge (die slice)

A defect hits 2-3 neighbouring bumps near the middle of the view, as process defects (warpage,
outgassing, paste) do. That count sets how hard the task is (measured 2026-12-01 with the xray
recipe, test split, 83K-parameter smallest subnet trained alone vs the 2.7M baseline): 3-5
bumps 92.3% vs 94.6%, model size hardly mattered; 2-3 bumps (now) 89.0% vs 93.2%; 1-3 bumps
79.7% vs 88.2%, the baseline under 90%. The baseline needs the 2,520-image pool to learn it:
on 840 images and 1-2 bumps a 2.7M ViT reached 54%, below the small one's 77%.
Nuisances keep it from being trivially separable: array position, rotation, pitch and bump size
jitter per image, per-bump size/position jitter, copper dog-bone traces at the pad level,
beam-hardening cupping (per bump and radial over the field), out-of-plane crosstalk between
slices, in-plane blur, low-frequency texture, intensity-dependent noise and gain/offset drift.

Rendering is vectorised numpy over all images at once (no per-image Python loop); it is written
by hand because no library renders this scene. Geometry is in pixels scaled by `image_size / 32`,
so any image size gives the same scene at a different resolution.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from vitsweep.data.splits import Splits, stratified_tensor_splits
from vitsweep.files import atomic_path
from vitsweep.spec import ConfigError, DataSpec

CLASSES = ("good", "void", "bridge", "missing", "non_wet", "misaligned", "crack")
GOOD, VOID, BRIDGE, MISSING, NON_WET, MISALIGNED, CRACK = range(len(CLASSES))

# Depth layout of the joint, as a fraction of the stand-off height (0 = substrate, 1 = die).
PAD_TOP = 0.08  # copper pad on the substrate
UBM_BOTTOM = 0.92  # under-bump metallisation on the die
_Z_SUBSAMPLES = 3  # depth samples averaged per slice (slab thickness)
_K = 3  # most bumps one defect hits in an image (process defects rarely hit one bump only)
_K_MIN = 2  # fewest
_GRID = 16  # per-bump random tables cover lattice indices -_OFF.._GRID-_OFF-1
_OFF = 4
_BUDGET = 1 << 22  # canvas pixels per rendering chunk: bounds memory for big image sizes

F32 = np.float32
# Grey levels are densities in ~[0, 1.1] with a mean near 0.32 (bumps cover ~30% of the view);
# this fixed map centres them like the other sets without depending on the split or the seed.
_GREY_MEAN, _GREY_SCALE = 0.32, 0.33
_FFT_SIZES = sorted(
    {2**a * 3**b * 5**c for a in range(13) for b in range(8) for c in range(6)} & set(range(4097))
)


@dataclass(frozen=True)
class Scenes:
    """The random draw behind a batch of images: every array has one row per image.

    Class-specific parameters are drawn for every image whatever its label, so replacing `label`
    renders the same board with a different defect (tests use that to locate each defect's depth).
    """

    label: np.ndarray  # (N,) int
    size: int  # image side in pixels
    slices: int
    pitch: np.ndarray  # (N,) bump pitch, px
    theta: np.ndarray  # (N,) array rotation, rad
    origin: np.ndarray  # (N, 2) lattice origin on the canvas, px
    radius: np.ndarray  # (N,) nominal bump radius at the equator, px
    bump_scale: np.ndarray  # (N, G, G) per-bump radius factor
    bump_shift: np.ndarray  # (N, G, G, 2) per-bump centre offset in the lattice frame, px
    rho_solder: np.ndarray  # (N,) densities (reconstructed grey level before shading)
    rho_copper: np.ndarray
    rho_fill: np.ndarray  # underfill / mould between bumps
    cup: np.ndarray  # (N,) per-bump beam-hardening cupping depth
    lean: np.ndarray  # (N, 3) die shift z=0..1: angle, size within tolerance, size if misaligned
    defect: np.ndarray  # (N, K, 2) lattice indices (i, j) of the bumps a defect may hit
    count: np.ndarray  # (N,) how many of those K bumps it hits (the first `count`)
    void: np.ndarray  # (N, K, 5) dx, dy (px), z centre, z half-height, radius (px)
    small_void: np.ndarray  # (N, 7) present, i, j, dx, dy, z centre, radius: benign, any class
    bridge: np.ndarray  # (N, K, 5) di, dj (neighbour), half-width px, z centre, z half-height
    gap: np.ndarray  # (N, K) non-wet air gap height above the pad (z units)
    crack: np.ndarray  # (N, K, 3) direction angle, edge position (fraction of radius), z height
    traces: np.ndarray  # (N, T, 3) i, j, diagonal index: pad-level dog-bone traces
    shading: np.ndarray  # (N, 4) radial cupping strength, centre x, y (px), radius (px)
    blur: np.ndarray  # (N,) in-plane PSF sigma, px
    crosstalk: np.ndarray  # (N,) weight of out-of-focus neighbouring slices
    texture: np.ndarray  # (N,) amplitude of low-frequency background texture
    noise: np.ndarray  # (N,) noise sigma
    gain: np.ndarray  # (N, 2) gain, offset

    @property
    def margin(self) -> int:
        return _margin(self.size)


def _margin(size: int) -> int:
    """Canvas border (px) so FFT blur wraps nowhere inside the crop; the canvas side is
    rounded up to a 2^a 3^b 5^c length, which numpy's FFT handles fastest. Wrap-around
    needs twice the margin to exceed ~3 sigma of the widest blur (crosstalk, 2.1 px at 32)."""
    low = size + 2 * int(np.ceil(0.1 * size))
    fast = [n for n in _FFT_SIZES if n >= low and (n - size) % 2 == 0]
    return ((fast[0] if fast else low) - size) // 2


def draw_scenes(label: np.ndarray, size: int, slices: int, rng: np.random.Generator) -> Scenes:
    """All random parameters for `label` images; the draw order is fixed (determinism)."""
    n = len(label)
    s = size / 32.0
    u = rng.uniform

    pitch = size / u(3.2, 4.0, n)
    radius = pitch * u(0.28, 0.34, n)
    margin = _margin(size)
    theta = u(-0.12, 0.12, n)
    origin = u(0.0, 1.0, (n, 2)) * pitch[:, None]
    bump_scale = 1.0 + 0.05 * rng.standard_normal((n, _GRID, _GRID))
    bump_shift = 0.03 * pitch[:, None, None, None] * rng.standard_normal((n, _GRID, _GRID, 2))

    rho_solder = u(0.72, 0.92, n)
    rho_copper = rho_solder * u(0.8, 1.0, n)
    rho_fill = u(0.12, 0.3, n)
    cup = u(0.0, 0.2, n)

    lean = np.stack([u(0.0, 2 * np.pi, n), u(0.0, 0.06, n), u(0.25, 0.45, n)], 1)

    # Up to K distinct bumps near the middle, fully inside the field of view at mid-depth.
    defect = _defect_sites(size, margin, origin, theta, pitch, radius, lean, label, rng)
    count = rng.integers(_K_MIN, _K + 1, n)
    void = np.stack(
        [
            *(0.22 * radius[:, None] * rng.standard_normal((2, n, _K))),
            u(0.42, 0.58, (n, _K)),
            u(0.12, 0.2, (n, _K)),
            radius[:, None] * u(0.5, 0.75, (n, _K)),
        ],
        -1,
    )
    small_at = _site_of(margin + size * u(0.15, 0.85, (n, 2)), origin, theta, pitch)
    small_void = np.stack(
        [
            (u(0, 1, n) < 0.5).astype(float),
            *small_at.T,
            *(0.3 * radius * rng.standard_normal((2, n))),
            u(0.2, 0.8, n),
            radius * u(0.12, 0.28, n),
        ],
        1,
    )
    neighbour = np.array([(1, 0), (-1, 0), (0, 1), (0, -1)])[rng.integers(0, 4, (n, _K))]
    bridge = np.concatenate(
        [
            neighbour,
            np.stack(
                [
                    radius[:, None] * u(0.3, 0.5, (n, _K)),
                    u(0.42, 0.58, (n, _K)),
                    u(0.15, 0.3, (n, _K)),
                ],
                -1,
            ),
        ],
        -1,
    )
    gap = u(0.15, 0.25, (n, _K))
    crack = np.stack([u(0, 2 * np.pi, (n, _K)), u(-0.6, 0.1, (n, _K)), u(0.2, 0.3, (n, _K))], -1)
    k = 3
    trace_at = _site_of(
        margin + size * u(0.0, 1.0, (n * k, 2)),
        np.repeat(origin, k, 0),
        np.repeat(theta, k),
        np.repeat(pitch, k),
    ).reshape(n, k, 2)
    traces = np.concatenate([trace_at, rng.integers(0, 4, (n, k, 1))], 2)

    shading = np.stack(
        [
            u(0.0, 0.2, n),
            margin + size * u(0.3, 0.7, n),
            margin + size * u(0.3, 0.7, n),
            size * u(0.6, 1.0, n),
        ],
        1,
    )
    return Scenes(
        label=np.asarray(label),
        size=size,
        slices=slices,
        pitch=pitch,
        theta=theta,
        origin=origin,
        radius=radius,
        bump_scale=bump_scale,
        bump_shift=bump_shift,
        rho_solder=rho_solder,
        rho_copper=rho_copper,
        rho_fill=rho_fill,
        cup=cup,
        lean=lean,
        defect=defect,
        count=count,
        void=void,
        small_void=small_void,
        bridge=bridge,
        gap=gap,
        crack=crack,
        traces=traces,
        shading=shading,
        blur=s * u(0.45, 0.85, n),
        crosstalk=u(0.05, 0.2, n),
        texture=u(0.01, 0.04, n),
        noise=u(0.02, 0.04, n),
        gain=np.stack([u(0.95, 1.05, n), u(-0.03, 0.03, n)], 1),
    )


def _defect_sites(
    size: int,
    margin: int,
    origin: np.ndarray,
    theta: np.ndarray,
    pitch: np.ndarray,
    radius: np.ndarray,
    lean: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """(N, K, 2) distinct lattice sites in random order, preferring bumps wholly in view."""
    n = len(origin)
    centre = _site_of(margin + size * rng.uniform(0.4, 0.6, (n, 2)), origin, theta, pitch)
    near = np.array([(a, b) for a in range(-2, 3) for b in range(-2, 3)])  # 5x5 candidates
    sites = centre[:, None, :] + near[None]  # (N, 25, 2)
    shift = np.where(label == MISALIGNED, lean[:, 2], lean[:, 1]) * 0.5 * pitch
    c, s = np.cos(theta)[:, None], np.sin(theta)[:, None]
    pi, pj = sites[..., 0] * pitch[:, None], sites[..., 1] * pitch[:, None]
    x = origin[:, :1] + c * pi - s * pj + (shift * np.cos(lean[:, 0]))[:, None] - margin
    y = origin[:, 1:] + s * pi + c * pj + (shift * np.sin(lean[:, 0]))[:, None] - margin
    lo, hi = radius[:, None] + 1.0, size - radius[:, None] - 1.0
    inside = (x > lo) & (x < hi) & (y > lo) & (y < hi)
    priority = rng.uniform(0.0, 1.0, sites.shape[:2]) + 2.0 * inside
    order = np.argsort(-priority, axis=1)[:, :_K]
    return np.take_along_axis(sites, order[..., None], 1)


def _site_of(xy: np.ndarray, origin: np.ndarray, theta: np.ndarray, pitch: np.ndarray):
    """Integer lattice index (i, j) of the bump nearest to canvas point `xy` (rows: images)."""
    d = xy - origin
    c, s = np.cos(theta), np.sin(theta)
    i = np.rint((c * d[:, 0] + s * d[:, 1]) / pitch)
    j = np.rint((-s * d[:, 0] + c * d[:, 1]) / pitch)
    return np.stack([i, j], 1)


def _disk(dist: np.ndarray, r: np.ndarray | float) -> np.ndarray:
    """Anti-aliased occupancy of a disk: 1 inside, 0 outside, a one-pixel ramp at the edge."""
    return np.clip(r - dist + 0.5, 0.0, 1.0)


def _col(a: np.ndarray) -> np.ndarray:
    """(N,) -> (N, 1, 1) float32, to broadcast a per-image value over its pixels."""
    return np.asarray(a, dtype=F32)[:, None, None]


@dataclass(frozen=True)
class _Frame:
    """Depth-independent lattice coordinates of a chunk, computed once per chunk."""

    lu: np.ndarray  # (N, C, C) pixel position in the lattice frame at z=0, px
    lv: np.ndarray
    lean_u: np.ndarray  # (N, 1, 1) die shift per unit depth in the lattice frame, px
    lean_v: np.ndarray
    bumps: np.ndarray  # (N*G*G, 3) per-bump shift u, v and radius factor, flattened
    base: np.ndarray  # (N, 1, 1) row offset into `bumps`


def _frame(sc: Scenes, xs: np.ndarray) -> _Frame:
    n = len(sc.label)
    cos, sin = np.cos(sc.theta), np.sin(sc.theta)
    dx, dy = xs[None, None, :] - _col(sc.origin[:, 0]), xs[None, :, None] - _col(sc.origin[:, 1])
    size = np.where(sc.label == MISALIGNED, sc.lean[:, 2], sc.lean[:, 1]) * sc.pitch
    lean = size[:, None] * np.stack([np.cos(sc.lean[:, 0]), np.sin(sc.lean[:, 0])], 1)  # px / z
    bumps = np.concatenate([sc.bump_shift, sc.bump_scale[..., None]], -1).astype(F32)
    return _Frame(
        lu=_col(cos) * dx + _col(sin) * dy,
        lv=-_col(sin) * dx + _col(cos) * dy,
        lean_u=_col(cos * lean[:, 0] + sin * lean[:, 1]),
        lean_v=_col(-sin * lean[:, 0] + cos * lean[:, 1]),
        bumps=bumps.reshape(-1, 3),
        base=(np.arange(n) * _GRID * _GRID)[:, None, None],
    )


def _density(sc: Scenes, z: float, fr: _Frame) -> np.ndarray:
    """Grey level of a horizontal cut at depth `z` (0 pad .. 1 die): (N, canvas, canvas).

    Defects are applied only to the rows (images) of their class, and only at the depths they
    span, which keeps the cost close to that of rendering good boards.
    """
    label, pitch = sc.label, _col(sc.pitch)
    # The die is shifted by lean * z, so each depth sees the bumps elsewhere (misalignment).
    lu, lv = fr.lu - fr.lean_u * z, fr.lv - fr.lean_v * z
    ii, jj = np.rint(lu / pitch), np.rint(lv / pitch)
    gi = np.clip(ii.astype(np.int64) + _OFF, 0, _GRID - 1)
    gj = np.clip(jj.astype(np.int64) + _OFF, 0, _GRID - 1)
    bump = fr.bumps[fr.base + gi * _GRID + gj]  # one gather for all per-bump values
    bx, by = lu - ii * pitch - bump[..., 0], lv - jj * pitch - bump[..., 1]
    dist = np.hypot(bx, by)
    r_eq = _col(sc.radius) * bump[..., 2]

    def at_site(rows: np.ndarray, site: np.ndarray) -> np.ndarray:
        """(len(rows), C, C) bool: pixels in the cell of `site` (one lattice index per row)."""
        return (ii[rows] == _col(site[:, 0])) & (jj[rows] == _col(site[:, 1]))

    def rows_where(mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero(mask)

    pad_layer = z < PAD_TOP or z > UBM_BOTTOM
    copper = _disk(dist, 0.75 * r_eq) if pad_layer else np.zeros_like(dist)
    # Barrel-shaped joint: widest at the equator, truncated by the pads.
    r_z = r_eq * F32(np.sqrt(max(0.0, 1.0 - ((z - 0.5) / 0.62) ** 2)))
    solder = np.zeros_like(dist) if pad_layer else _disk(dist, r_z)
    occupied = np.maximum(copper, solder)  # not underfill: solder, copper, or gas inside a joint

    def carve_void(mask, site, cx, cy, zc, hz, rad) -> None:
        """Gas inside a joint: the density drops, the volume stays `occupied`."""
        rows = rows_where(mask & (np.abs(z - zc) < hz))
        if len(rows) == 0:
            return
        half = np.sqrt(1.0 - ((z - zc[rows]) / hz[rows]) ** 2)
        cut = np.hypot(bx[rows] - _col(cx[rows]), by[rows] - _col(cy[rows]))
        hole = _disk(cut, _col(rad[rows] * half)) * at_site(rows, site[rows])
        solder[rows] *= 1.0 - hole

    sv = sc.small_void
    carve_void(
        sv[:, 0] > 0, sv[:, 1:3], sv[:, 3], sv[:, 4], sv[:, 5], np.full(len(sv), 0.1), sv[:, 6]
    )
    for k in range(_K):  # the k-th hit bump of every image whose defect hits > k bumps
        hit = sc.count > k
        site = sc.defect[:, k]
        v = sc.void[:, k]
        carve_void(hit & (label == VOID), site, v[:, 0], v[:, 1], v[:, 2], v[:, 3], v[:, 4])

        rows = rows_where(hit & (label == MISSING))
        gone = at_site(rows, site[rows])
        solder[rows] = np.where(gone, 0.0, solder[rows])
        occupied[rows] = np.where(gone, copper[rows], occupied[rows])

        gap = sc.gap[:, k]
        rows = rows_where(hit & (label == NON_WET) & (z >= PAD_TOP) & (z < PAD_TOP + gap))
        solder[rows] = np.where(at_site(rows, site[rows]), 0.0, solder[rows])  # air gap

        ca, cb, ch = sc.crack[:, k].T
        rows = rows_where(hit & (label == CRACK) & (z > UBM_BOTTOM - ch) & (z <= UBM_BOTTOM))
        if len(rows):
            along = bx[rows] * _col(np.cos(ca[rows])) + by[rows] * _col(np.sin(ca[rows]))
            along = along / np.maximum(r_z[rows], 1e-3)
            cracked = np.clip((along - _col(cb[rows])) * 4.0, 0.0, 1.0)
            solder[rows] *= 1.0 - cracked * at_site(rows, site[rows])

        # Bridge: a capsule from the hit bump's centre to a neighbour's, around the equator.
        b = sc.bridge[:, k]
        rows = rows_where(hit & (label == BRIDGE) & (np.abs(z - b[:, 3]) < b[:, 4]))
        if len(rows):
            p0 = site[rows] * sc.pitch[rows, None]
            p1 = (site[rows] + b[rows, :2]) * sc.pitch[rows, None]
            link = _disk(_segment_distance(lu[rows], lv[rows], p0, p1), _col(b[rows, 2]))
            solder[rows] = np.maximum(solder[rows], link)
            occupied[rows] = np.maximum(occupied[rows], link)

    if z < PAD_TOP:  # dog-bone traces: pad -> via at the diagonal half-pitch, copper only
        for t in range(sc.traces.shape[1]):
            i0, j0, diag = sc.traces[:, t].T
            ang = np.pi / 4 + diag * np.pi / 2  # lattice frame: the four diagonals
            p0 = np.stack([i0, j0], 1) * sc.pitch[:, None]
            p1 = p0 + 0.707 * sc.pitch[:, None] * np.stack([np.cos(ang), np.sin(ang)], 1)
            line = _disk(_segment_distance(lu, lv, p0, p1), 0.12 * _col(sc.radius))
            via = _disk(np.hypot(lu - _col(p1[:, 0]), lv - _col(p1[:, 1])), 0.3 * _col(sc.radius))
            copper = np.maximum(copper, np.maximum(line, via))
        occupied = np.maximum(occupied, copper)

    # Beam hardening inside each joint: the centre reconstructs darker than the rim (cupping).
    cupped = 1.0 - _col(sc.cup) * np.clip(1.0 - (dist / np.maximum(r_eq, 1e-3)) ** 2, 0.0, 1.0)
    return (
        _col(sc.rho_fill) * (1.0 - occupied)
        + _col(sc.rho_solder) * cupped * solder
        + _col(sc.rho_copper) * copper
    )


def _segment_distance(x: np.ndarray, y: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Distance from every pixel (x, y) to the per-image segment p0-p1 (all in one frame)."""
    ax, ay = _col(p0[:, 0]), _col(p0[:, 1])
    ex, ey = _col(p1[:, 0] - p0[:, 0]), _col(p1[:, 1] - p0[:, 1])
    t = np.clip(((x - ax) * ex + (y - ay) * ey) / np.maximum(ex * ex + ey * ey, 1e-6), 0.0, 1.0)
    return np.hypot(x - ax - t * ex, y - ay - t * ey)


def _gaussian_kernel(shape: tuple[int, ...], sigma: np.ndarray) -> np.ndarray:
    """rfft2-domain Gaussian transfer function, one sigma per image: (N, 1, C, C//2+1)."""
    f = np.fft.fftfreq(shape[-2]).astype(F32)
    f2 = f[:, None] ** 2 + np.fft.rfftfreq(shape[-1]).astype(F32)[None, :] ** 2
    return np.exp(-2.0 * np.pi**2 * sigma.astype(F32)[:, None, None, None] ** 2 * f2)


def _gaussian_blur(img: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Per-image Gaussian blur of (N, S, C, C) via FFT (one sigma per image, vectorised)."""
    kernel = _gaussian_kernel(img.shape, sigma)
    return np.fft.irfft2(np.fft.rfft2(img) * kernel, s=img.shape[-2:]).astype(F32)


def _optics(slab: np.ndarray, sc: Scenes) -> np.ndarray:
    """In-plane PSF plus out-of-focus crosstalk (each slice carries a wider-blurred copy of its
    neighbours, as in laminography), both linear, so done in one FFT round trip."""
    spec = np.fft.rfft2(slab)
    near = _gaussian_kernel(slab.shape, sc.blur)
    slices = slab.shape[1]
    if slices > 1:
        far = _gaussian_kernel(slab.shape, 2.5 * sc.blur)
        zc = (np.arange(slices) + 0.5) / slices
        w = np.exp(-np.abs(zc[:, None] - zc[None, :]) / 0.3) * (1 - np.eye(slices))
        w = (w / w.sum(1, keepdims=True)).astype(F32)
        a = sc.crosstalk.astype(F32)[:, None, None, None]
        spec = (1 - a) * spec + a * far * np.einsum("kj,njxy->nkxy", w, spec)
    return np.fft.irfft2(spec * near, s=slab.shape[-2:]).astype(F32)


def render(sc: Scenes, rng: np.random.Generator) -> np.ndarray:
    """Images (N, slices, size, size) float32, normalised to roughly zero mean, std ~0.5.

    `rng` supplies only the pixel noise and texture, so equal `Scenes` + equal seeds give
    bit-identical images; it is consumed in chunks to bound memory at large image sizes.
    """
    n, size, slices, m = len(sc.label), sc.size, sc.slices, sc.margin
    canvas = size + 2 * m
    chunk = max(1, _BUDGET // (canvas * canvas * slices))
    out = np.empty((n, slices, size, size), F32)
    for lo in range(0, n, chunk):
        part = _take(sc, slice(lo, min(n, lo + chunk)))
        out[lo : lo + len(part.label)] = _render_chunk(part, rng)
    return out


def _take(sc: Scenes, rows: slice) -> Scenes:
    fields = {k: (v[rows] if isinstance(v, np.ndarray) else v) for k, v in sc.__dict__.items()}
    return Scenes(**fields)


def _render_chunk(sc: Scenes, rng: np.random.Generator) -> np.ndarray:
    n, size, slices, m = len(sc.label), sc.size, sc.slices, sc.margin
    canvas = size + 2 * m
    xs = np.arange(canvas, dtype=F32) + 0.5
    frame = _frame(sc, xs)
    slab = np.empty((n, slices, canvas, canvas), F32)
    for k in range(slices):  # each slice is a slab: average several depths inside it
        zs = (k + (np.arange(_Z_SUBSAMPLES) + 0.5) / _Z_SUBSAMPLES) / slices
        slab[:, k] = sum(_density(sc, float(z), frame) for z in zs) / _Z_SUBSAMPLES

    img = _optics(slab, sc)

    texture = _gaussian_blur(rng.standard_normal(img.shape, dtype=F32), np.full(n, 2.5 * size / 32))
    texture /= texture.std(axis=(-2, -1), keepdims=True) + 1e-6
    img += sc.texture.astype(F32)[:, None, None, None] * texture

    # Beam hardening over the field: a radial cupping of the whole reconstruction.
    amp, cx, cy, rad = (v.astype(F32)[:, None, None] for v in sc.shading.T)
    r2 = ((xs[None, None, :] - cx) ** 2 + (xs[None, :, None] - cy) ** 2) / rad**2
    img *= (1.0 - amp * np.clip(1.0 - r2, 0.0, 1.0))[:, None]

    img = img[:, :, m : m + size, m : m + size]
    scale = np.sqrt(np.clip(img, 0.0, None)) + 0.3  # brighter = more photons-limited noise
    img = img + sc.noise.astype(F32)[:, None, None, None] * scale * rng.standard_normal(
        img.shape, dtype=F32
    )
    img = (
        img * sc.gain[:, 0].astype(F32)[:, None, None, None]
        + sc.gain[:, 1].astype(F32)[:, None, None, None]
    )
    return ((img - _GREY_MEAN) / _GREY_SCALE).astype(F32)


def _check(spec: DataSpec) -> None:
    """What DataSpec itself cannot know: limits of this generator."""
    if spec.image_size < 16:
        raise ConfigError(f"data.image_size={spec.image_size}: xray_synth needs >= 16")
    if spec.in_chans != spec.slices:
        raise ConfigError(
            f"data.in_chans={spec.in_chans} must equal data.slices={spec.slices} for xray_synth "
            "(the depth slices are the channels)"
        )


# Bumped whenever the renderer changes what a seed draws: cached files of older versions are
# then ignored (their key differs).
GENERATOR_VERSION = 2  # 2: a defect hits 2-3 bumps (was 3-5)


def balanced_labels(n: int, classes: int = len(CLASSES)) -> np.ndarray:
    """`n` labels, class-major, as equal per class as `n` allows (first classes get the rest)."""
    per = np.full(classes, n // classes)
    per[: n % classes] += 1
    return np.repeat(np.arange(classes), per)


def generate(
    spec: DataSpec, label: np.ndarray | None = None, stream: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels (class-major order) of the pool (`stream` 0: `samples_per_class` per
    class) or of a separately drawn split (`stream` 1 val, 2 test, with its own `label`)."""
    _check(spec)
    if label is None:
        label = np.repeat(np.arange(len(CLASSES)), spec.samples_per_class)
    # The pool keeps the seed sequence it always had, so its images do not change.
    rng = np.random.default_rng([spec.seed, 0x5EED] + ([stream] if stream else []))
    scenes = draw_scenes(label, spec.image_size, spec.slices, rng)
    return render(scenes, rng), label


def _cached_split(
    spec: DataSpec, n: int, stream: int, cache_dir: Path | None
) -> tuple[np.ndarray, np.ndarray]:
    """`n` images of random stream `stream` (0: the pool, 1: val, 2: test), rendered once and
    kept as .npy under `cache_dir` (~12 MB per 1,000 images at 32 px with 3 slices): every
    trial loads its splits, and rendering the 2,520-image pool took 2.5 s of each."""
    label = balanced_labels(n)
    if cache_dir is None:
        return generate(spec, label, stream)
    # Only what changes the pixels: a new train pool size reuses the cached val/test splits.
    what = (GENERATOR_VERSION, spec.seed, spec.image_size, spec.slices, n, stream)
    key = hashlib.sha256(repr(what).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"xray-{key}.npy"
    if not path.exists():
        from filelock import FileLock

        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path.with_suffix(".lock"))):
            if not path.exists():
                x, _ = generate(spec, label, stream)
                with atomic_path(path) as tmp:
                    np.save(tmp, x)
    x = np.load(path)
    if x.shape != (n, spec.slices, spec.image_size, spec.image_size):
        raise ConfigError(f"{path}: cached split has shape {x.shape}; delete it to regenerate")
    return x, label


def load_xray(spec: DataSpec, cache_dir: str | Path | None = None) -> Splits:
    """Stratified train/val/test splits of the synthetic X-ray set (channels = depth slices).

    With `data.val_size`/`test_size` the val and test splits are drawn apart (their own random
    streams, balanced classes) and cached under `cache_dir`; the pool then trains whole.
    """
    # stream 0 with class-major labels: the pool `generate(spec)` renders, from the cache
    x, y = _cached_split(spec, len(CLASSES) * spec.samples_per_class, 0, _dir(cache_dir))
    images, labels = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    if spec.val_size > 0:
        train = TensorDataset(images, labels)
        val, test = (
            _tensor_set(*_cached_split(spec, n, stream, _dir(cache_dir)))
            for n, stream in ((spec.val_size, 1), (spec.test_size, 2))
        )
    else:
        train, val, test = stratified_tensor_splits(images, labels, spec)

    return Splits(
        train=train,
        val=val,
        test=test,
        num_classes=len(CLASSES),
        in_chans=spec.slices,
        image_size=spec.image_size,
        class_names=CLASSES,
    )


def _dir(cache_dir: str | Path | None) -> Path | None:
    return None if cache_dir is None else Path(cache_dir)


def _tensor_set(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)))
