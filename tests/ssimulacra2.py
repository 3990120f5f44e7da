"""SSIMULACRA2, the perceptual metric of JPEG XL's tools (libjxl 0.11, tools/ssimulacra2.cc).

A step-by-step port to NumPy, float32 planes and fused multiply-adds included, because the
metric's recursive Gaussian has its poles on the unit circle: rounding is never damped, so a
float64 or FIR version of it drifts by up to 0.6 points on a full-size photo. The PyPI package
`ssimulacra2` (0.3.0) does both, and also stops one scale early on images under 256 pixels a
side (24 points off on a 160x120 photo). tests/test_ssimulacra2.py holds this port to scores that
libjxl's own tool printed.

Scores run from 100 (identical) down; 70 is "high quality", 50 "medium" (libjxl's guide).
Used by bench/quality.py and the codec's calibration tests: dev dependency only (NumPy, SciPy).

The metric is libjxl's (BSD-3-Clause, Copyright (c) the JPEG XL Project Authors); the weights
below are its tuned constants.
"""

from __future__ import annotations

import math
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

Plane: TypeAlias = npt.NDArray[np.float32]  # height x width x 3, as libjxl's Image3F
Pixels: TypeAlias = npt.NDArray[np.uint8]  # height x width x 3, 8-bit sRGB

_F32 = np.float32
_F64 = np.float64
_SCALES = 6
_MIN_SIZE = 8
_C2 = _F32(0.0009)

_WEIGHTS = np.array(
    [
        *(0.0, 0.0007376606707406586, 0.0, 0.0, 0.0007793481682867309, 0.0, 0.0),
        *(0.0004371155730107379, 0.0, 1.1041726426657346, 0.00066284834129271),
        *(0.00015231632783718752, 0.0, 0.0016406437456599754, 0.0, 1.8422455520539298),
        *(11.441172603757666, 0.0, 0.0007989109436015163, 0.000176816438078653, 0.0),
        *(1.8787594979546387, 10.94906990605142, 0.0, 0.0007289346991508072),
        *(0.9677937080626833, 0.0, 0.00014003424285435884, 0.9981766977854967),
        *(0.00031949755934435053, 0.0004550992113792063, 0.0, 0.0, 0.0013648766163243398),
        *(0.0, 0.0, 0.0, 0.0, 0.0, 7.466890328078848, 0.0, 17.445833984131262),
        *(0.0006235601634041466, 0.0, 0.0, 6.683678146179332, 0.00037724407979611296),
        *(1.027889937768264, 225.20515300849274, 0.0, 0.0, 19.213238186143016),
        *(0.0011401524586618361, 0.001237755635509985, 176.39317598450694, 0.0, 0.0),
        *(24.43300999870476, 0.28520802612117757, 0.0004485436923833408, 0.0, 0.0, 0.0),
        *(34.77906344483772, 44.835625328877896, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        *(0.0008680556573291698, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0005313191874358747, 0.0),
        *(0.00016533814161379112, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0004179171803251336),
        *(0.0017290828234722833, 0.0, 0.0020827005846636437, 0.0, 0.0, 8.826982764996862),
        *(23.19243343998926, 0.0, 95.1080498811086, 0.9863978034400682, 0.9834382792465353),
        *(0.0012286405048278493, 171.2667255897307, 0.9807858872435379, 0.0, 0.0, 0.0),
        *(0.0005130064588990679, 0.0, 0.00010854057858411537),
    ]
)


def _fma(a: Any, b: Any, c: Any) -> Plane:
    """a * b + c rounded once to float32, as a fused multiply-add: the product of two float32
    is exact in float64, so only the sum rounds (twice, which almost never differs)."""
    product = np.multiply(a, b, dtype=_F64)
    product += c
    result: Plane = product.astype(_F32)
    return result


# --- colour: linear sRGB to XYB (lib/jxl/enc_xyb.cc, lib/jxl/cms/opsin_params.h) ---------------


def _opsin_matrix() -> npt.NDArray[np.float32]:
    m02, m00 = _F32(0.078), _F32(0.30)
    m12, m10 = _F32(0.078), _F32(0.23)
    m20, m21 = _F32(0.24342268924547819), _F32(0.20476744424496821)
    one = _F32(1.0)
    return np.array(
        [
            [m00, one - m02 - m00, m02],
            [m10, one - m12 - m10, m12],
            [m20, m21, one - m20 - m21],
        ],
        dtype=_F32,
    )


_OPSIN = _opsin_matrix()
_OPSIN_BIAS = _F32(0.0037930732552754493)
_NEG_BIAS_CBRT = -_F32(np.cbrt(_OPSIN_BIAS))


def _cube_root_and_add(x: Plane, add: np.float32) -> Plane:
    """libjxl's CubeRootAndAdd: a bit-trick guess of x^(-1/3), four Newton steps, then x * r^2."""
    bits = x.view(np.int32)
    guess = np.where(bits == 0, 0, np.int32(0x54800000) - (bits >> 23) * np.int32(0x002AAAAA))
    r = guess.astype(np.int32).view(_F32)
    x_3 = x * _F32(1.0 / 3)
    for _ in range(3):
        r2 = r * r
        r = _fma(-x_3, r2 * r2, _F32(4.0 / 3) * r)
    r2 = r * r
    r = _fma(_F32(1.0 / 3), _fma(-x, r2 * r2, r), r)
    return _fma(r * r, x, add)


def linear_srgb(pixels: Pixels) -> Plane:
    """8-bit sRGB to linear light, 0..1 (the exact sRGB curve; libjxl converts through lcms2)."""
    v = pixels.astype(_F64) / 255.0
    linear = np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)
    result: Plane = linear.astype(_F32)
    return result


def positive_xyb(linear: Plane) -> Plane:
    """XYB, then rescaled to about 0..1 with B made B-Y (MakePositiveXYB)."""
    r, g, b = linear[..., 0], linear[..., 1], linear[..., 2]
    mixed = [
        np.maximum(_fma(m[0], r, _fma(m[1], g, _fma(m[2], b, _OPSIN_BIAS))), _F32(0))
        for m in _OPSIN
    ]
    m0, m1, m2 = (_cube_root_and_add(plane, _NEG_BIAS_CBRT) for plane in mixed)
    x = _F32(0.5) * (m0 - m1)
    y = _F32(0.5) * (m0 + m1)
    return np.stack(
        [x * _F32(14.0) + _F32(0.42), y + _F32(0.01), (m2 - y) + _F32(0.55)], axis=-1
    ).astype(_F32)


def downsample(linear: Plane) -> Plane:
    """Halve each side, averaging 2x2 blocks in linear light; an odd edge repeats its last pixel."""
    height, width, _ = linear.shape
    padded = np.pad(linear, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    # In libjxl's order: (top-left + top-right) + bottom-left + bottom-right, in float32.
    total = padded[0::2, 0::2] + padded[0::2, 1::2] + padded[1::2, 0::2] + padded[1::2, 1::2]
    result: Plane = total * _F32(0.25)
    return result


# --- the recursive Gaussian (tools/gauss_blur.cc: Charalampidis 2016) -------------------------


def _recursive_gaussian(sigma: float) -> tuple[int, list[float], list[float]]:
    """Radius and the three second-order filters' n2 and d1 (CreateRecursiveGaussian)."""
    radius = float(round(3.2795 * sigma + 0.2546))
    omega = [k * math.pi / (2.0 * radius) for k in (1, 3, 5)]
    p = [1.0 / math.tan(0.5 * omega[0]), -1.0 / math.tan(0.5 * omega[1])]
    p.append(1.0 / math.tan(0.5 * omega[2]))
    r = [p[0] ** 2 / math.sin(omega[0]), -(p[1] ** 2) / math.sin(omega[1])]
    r.append(p[2] ** 2 / math.sin(omega[2]))
    rho = [math.exp(-0.5 * sigma * sigma * w * w) / radius for w in omega]
    d_13 = p[0] * r[1] - r[0] * p[1]
    d_35 = p[1] * r[2] - r[1] * p[2]
    d_51 = p[2] * r[0] - r[2] * p[0]
    zeta_15, zeta_35 = d_35 / d_13, d_51 / d_13
    system = np.array([p, r, [zeta_15, zeta_35, 1.0]])
    gamma = [1.0, radius * radius - sigma * sigma, zeta_15 * rho[0] + zeta_35 * rho[1] + rho[2]]
    beta = np.linalg.solve(system, gamma)
    n2 = [float(-beta[i] * math.cos(omega[i] * (radius + 1.0))) for i in range(3)]
    d1 = [-2.0 * math.cos(w) for w in omega]
    return int(radius), n2, d1


_RADIUS, _N2_DOUBLE, _D1_DOUBLE = _recursive_gaussian(1.5)
_N2 = np.array(_N2_DOUBLE, _F32).reshape(3, 1, 1)
_D1 = np.array(_D1_DOUBLE, _F32).reshape(3, 1, 1)


def _unrolled_multipliers() -> tuple[Plane, Plane, Plane]:
    """Four outputs at a time from four inputs and the last two outputs (FastGaussian1D)."""
    mul_in, mul_prev, mul_prev2 = (np.zeros((3, 4), _F32) for _ in range(3))
    for i, (n2, d1) in enumerate(zip(_N2_DOUBLE, _D1_DOUBLE, strict=True)):
        d2 = d1 * d1
        mul_in[i] = [n2, -d1 * n2, d2 * n2 - n2, -d2 * d1 * n2 + 2.0 * d1 * n2]
        mul_prev[i] = [-d1, d2 - 1.0, -d2 * d1 + 2.0 * d1, d2 * d2 - 3.0 * d2 + 1.0]
        mul_prev2[i] = [-1.0, d1, -d2 + 1.0, d2 * d1 - 2.0 * d1]
    return mul_in, mul_prev, mul_prev2


_MUL_IN, _MUL_PREV, _MUL_PREV2 = _unrolled_multipliers()
_LANES = 4
# Lane j of the input from step i: mul_in shifted left by i lanes (zeros shifted in).
_MUL_IN_SHIFTED = [np.zeros((3, _LANES, 1, 1), _F32) for _ in range(_LANES)]
for _shift in range(_LANES):
    _MUL_IN_SHIFTED[_shift][:, _shift:, 0, 0] = _MUL_IN[:, : _LANES - _shift]


def _horizontal(plane: Plane) -> Plane:
    """Blur along each row: scalar steps at the edges, four lanes at a time between them."""
    # width x height x 3, contiguous: one step per column, each a block of memory.
    columns = np.ascontiguousarray(np.moveaxis(plane, 1, 0))
    width, n = columns.shape[0], _RADIUS
    out = np.empty_like(columns)
    zero = np.zeros(columns.shape[1:], _F32)
    prev = np.zeros((3, *columns.shape[1:]), _F32)
    prev2 = np.zeros_like(prev)

    def scalar_step(i: int) -> None:
        nonlocal prev, prev2
        left, right = i - n - 1, i + n - 1
        total = (columns[left] if left >= 0 else zero) + (columns[right] if right < width else zero)
        step = total * _MUL_IN[:, 0, None, None]
        step = _fma(_MUL_PREV2[:, 0, None, None], prev2, step)
        prev2 = prev
        step = _fma(_MUL_PREV[:, 0, None, None], prev, step)
        prev = step
        if i >= 0:
            out[i] = step[0] + (step[1] + step[2])

    i = -n + 1
    first_aligned = -(-(n + 1) // _LANES) * _LANES
    while i < min(first_aligned, width):
        scalar_step(i)
        i += 1
    while i < width - n + 1 - (_LANES - 1):
        totals = columns[i - n - 1 : i - n - 1 + _LANES] + columns[i + n - 1 : i + n - 1 + _LANES]
        lanes = totals[0] * _MUL_IN_SHIFTED[0]
        for shift in range(1, _LANES):
            lanes = _fma(_MUL_IN_SHIFTED[shift], totals[shift], lanes)
        lanes = _fma(_MUL_PREV2[:, :, None, None], prev2[:, None], lanes)
        lanes = _fma(_MUL_PREV[:, :, None, None], prev[:, None], lanes)
        prev2, prev = lanes[:, _LANES - 2], lanes[:, _LANES - 1]
        out[i : i + _LANES] = lanes[0] + (lanes[1] + lanes[2])
        i += _LANES
    while i < width:
        scalar_step(i)
        i += 1
    return np.moveaxis(out, 0, 1)


def _vertical(plane: Plane) -> Plane:
    """Blur along each column, one row at a time (FastGaussianVertical)."""
    height, n = plane.shape[0], _RADIUS
    out = np.empty_like(plane)
    zero = np.zeros(plane.shape[1:], _F32)
    y1 = np.zeros((3, *plane.shape[1:]), _F32)
    y2 = np.zeros_like(y1)
    for i in range(-n + 1, height):
        top, bottom = i - n - 1, i + n - 1
        below = plane[bottom] if bottom < height else zero
        total = below if top < 0 else plane[top] + below
        y = _fma(_N2, total, _fma(-_D1, y1, -y2))
        y2, y1 = y1, y
        if i >= 0:
            out[i] = y[0] + (y[1] + y[2])
    return out


def blur(plane: Plane) -> Plane:
    """libjxl's Gaussian blur, sigma 1.5, zero outside the image."""
    return _vertical(_horizontal(plane))


# --- the score ---------------------------------------------------------------------------------


def _ssim_norms(
    mu1: Plane, mu2: Plane, s11: Plane, s22: Plane, s12: Plane
) -> npt.NDArray[np.float64]:
    """1 - SSIM' per pixel (without the luma denominator), 1-norm and 4-norm per channel."""
    num_m = (1.0 - ((mu1 - mu2) * (mu1 - mu2)).astype(_F64)).astype(_F32)
    num_s = _F32(2) * (s12 - mu1 * mu2) + _C2
    denom_s = (s11 - mu1 * mu1) + (s22 - mu2 * mu2) + _C2
    d = np.maximum(1.0 - (num_m * num_s / denom_s).astype(_F64), 0.0)
    return np.stack([d.mean(axis=(0, 1)), _quartic(d).mean(axis=(0, 1)) ** 0.25])


def _edge_norms(img1: Plane, mu1: Plane, img2: Plane, mu2: Plane) -> npt.NDArray[np.float64]:
    """Ringing (edges the original lacks) and blurring (edges lost), two norms each."""
    ratio = (1.0 + np.abs(img2 - mu2).astype(_F64)) / (1.0 + np.abs(img1 - mu1).astype(_F64))
    d1 = ratio - 1.0
    norms = []
    for error in (np.maximum(d1, 0.0), np.maximum(-d1, 0.0)):
        norms += [error.mean(axis=(0, 1)), _quartic(error).mean(axis=(0, 1)) ** 0.25]
    return np.stack(norms)  # ringing 1, ringing 4, blurring 1, blurring 4


def _quartic(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    squared = x * x
    result: npt.NDArray[np.float64] = squared * squared
    return result


def _final_score(per_scale: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]) -> float:
    total, i = 0.0, 0
    for channel in range(3):
        for ssim, edge in per_scale:
            for norm in range(2):
                total += _WEIGHTS[i] * abs(ssim[norm][channel])
                total += _WEIGHTS[i + 1] * abs(edge[norm][channel])
                total += _WEIGHTS[i + 2] * abs(edge[norm + 2][channel])
                i += 3
    total *= 0.9562382616834844
    total = (
        2.326765642916932 * total
        - 0.020884521182843837 * total * total
        + 6.248496625763138e-05 * total * total * total
    )
    return 100.0 - 10.0 * total**0.6276336467831387 if total > 0 else 100.0


class Reference:
    """An original, prepared once at every scale, to score any number of versions of it."""

    def __init__(self, pixels: Pixels) -> None:
        _check(pixels)
        self.shape = pixels.shape
        self._scales: list[tuple[Plane, Plane, Plane]] = []  # image, blur(image^2), blur(image)
        linear = linear_srgb(pixels)
        for scale in range(_SCALES):
            # As libjxl: the size that stops it is the one before halving.
            if scale and min(linear.shape[:2]) < _MIN_SIZE:
                break
            if scale:
                linear = downsample(linear)
            image = positive_xyb(linear)
            self._scales.append((image, blur(image * image), blur(image)))

    def score(self, pixels: Pixels) -> float:
        """SSIMULACRA2 of `pixels` (same size) against this original."""
        if pixels.shape != self.shape:
            raise ValueError(f"sizes differ: {pixels.shape} against {self.shape}")
        linear = linear_srgb(pixels)
        per_scale = []
        for scale, (img1, sigma11, mu1) in enumerate(self._scales):
            if scale:
                linear = downsample(linear)
            img2 = positive_xyb(linear)
            mu2 = blur(img2)
            ssim = _ssim_norms(mu1, mu2, sigma11, blur(img2 * img2), blur(img1 * img2))
            per_scale.append((ssim, _edge_norms(img1, mu1, img2, mu2)))
        return _final_score(per_scale)


def score(original: Pixels, distorted: Pixels) -> float:
    return Reference(original).score(distorted)


def _check(pixels: Pixels) -> None:
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"8-bit RGB pixels expected, not {pixels.dtype} {pixels.shape}")
    if min(pixels.shape[:2]) < _MIN_SIZE:
        raise ValueError(f"the smallest image SSIMULACRA2 scores is 8x8, not {pixels.shape[:2]}")
