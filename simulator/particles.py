"""Primary particles: sizes, shapes and their implicit surfaces.

Every primary is a star-shaped body around its centre c. With q = p - c and u = q / |q|, its surface is

    F(q) = sqrt(q^T M q) - s(u) = 0,

where M = R diag(1/a^2, 1/b^2, 1/c^2) R^T is an ellipsoid (semi-axes a >= b = c, rotation R) and
s(u) = 1 + sum_k coeff_k m_k(u) is a smooth radial perturbation: a random polynomial of degree <= D in the
components of u (monomials m_k), standardised to zero mean and unit standard deviation over the sphere, then
scaled by ``roughness``. Spheres and ellipsoids have coeff = 0 and s = 1. F < 0 inside, F > 0 outside, and
grad F points outwards, so the unit normal is grad F / |grad F|.

Sizes are volume-equivalent diameters drawn from a truncated log-normal; every body is rescaled so that its
volume equals that of the sphere of the drawn diameter (numerical quadrature for perturbed bodies).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy.spatial.transform import Rotation
from scipy.special import ndtr, ndtri

from simulator.config import PrimaryConfig

_N_SPHERE_SAMPLES = 1024  # quadrature / bound directions on the unit sphere


@dataclass(frozen=True, slots=True)
class Primaries:
    """N primary particles in world coordinates (nm). x = column direction, y = row direction, z = up."""

    centre_nm: np.ndarray  # (N, 3) float64
    radius_nm: np.ndarray  # (N,) volume-equivalent radius
    semi_axes_nm: np.ndarray  # (N, 3) ellipsoid semi-axes before perturbation
    shape_matrix: np.ndarray  # (N, 3, 3) M, in 1/nm^2
    coeff: np.ndarray  # (N, K) perturbation coefficients over monomials_exponents(degree)
    shell_out: np.ndarray  # (N,) s(u) <= shell_out for all u (outer bounding ellipsoid scale)
    shell_in: np.ndarray  # (N,) s(u) >= shell_in for all u (inner bounding ellipsoid scale)
    lipschitz_per_nm: np.ndarray  # (N,) bound on |grad F| outside the body, 1/nm
    aggregate_id: np.ndarray  # (N,) int32, 0-based

    def __len__(self) -> int:
        return len(self.radius_nm)

    @property
    def degree(self) -> int:
        return _degree_from_count(self.coeff.shape[1])

    def take(self, index: np.ndarray) -> Primaries:
        """The subset of primaries at ``index`` (same order)."""
        return Primaries(**{name: getattr(self, name)[index] for name in self.__slots__})

    def with_centres(self, centre_nm: np.ndarray, aggregate_id: np.ndarray) -> Primaries:
        fields = {name: getattr(self, name) for name in self.__slots__}
        fields.update(centre_nm=np.asarray(centre_nm, float), aggregate_id=np.asarray(aggregate_id, np.int32))
        return Primaries(**fields)

    def rotated(self, rotation: np.ndarray) -> Primaries:
        """Rotate every body about its own centre by the (3, 3) matrix ``rotation`` (centres unchanged).

        The perturbation polynomial is expressed in world axes, so rotating it exactly would mean re-expanding
        it; instead it stays attached to the world frame. Its statistics do not depend on orientation.
        """
        fields = {name: getattr(self, name) for name in self.__slots__}
        fields["shape_matrix"] = rotation @ self.shape_matrix @ rotation.T
        return Primaries(**fields)

    @staticmethod
    def concatenate(parts: list[Primaries]) -> Primaries:
        return Primaries(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in Primaries.__slots__})


@cache
def monomial_exponents(degree: int) -> np.ndarray:
    """(K, 3) exponents (i, j, k) of all monomials x^i y^j z^k with i + j + k <= degree, constant first."""
    rows = [(i, j, t - i - j) for t in range(degree + 1) for i in range(t, -1, -1) for j in range(t - i, -1, -1)]
    return np.array(rows, dtype=np.int64)


@cache
def _degree_from_count(count: int) -> int:
    for degree in range(16):
        if len(monomial_exponents(degree)) == count:
            return degree
    raise ValueError(f"no polynomial degree has {count} monomials")


def eval_monomials(u: np.ndarray, degree: int) -> np.ndarray:
    """(M, 3) directions -> (M, K) monomial values."""
    exps = monomial_exponents(degree)
    px, py, pz = (_powers(u[:, axis], degree) for axis in range(3))
    return np.stack([px[i] * py[j] * pz[k] for i, j, k in exps], axis=1)


def _powers(v: np.ndarray, degree: int) -> list[np.ndarray]:
    out = [np.ones_like(v), v]
    for _ in range(2, degree + 1):
        out.append(out[-1] * v)
    return out[: degree + 1]


@cache
def monomial_derivative_matrices(degree: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K, K) matrices D_x, D_y, D_z with coeff(dP/dx) = D_x @ coeff(P) over monomial_exponents(degree)."""
    exps = monomial_exponents(degree)
    index = {tuple(e): k for k, e in enumerate(exps.tolist())}
    mats = []
    for axis in range(3):
        d = np.zeros((len(exps), len(exps)))
        for k, e in enumerate(exps.tolist()):
            if e[axis] > 0:
                lower = list(e)
                lower[axis] -= 1
                d[index[tuple(lower)], k] = e[axis]
        mats.append(d)
    return tuple(mats)


@cache
def fibonacci_sphere(n: int = _N_SPHERE_SAMPLES) -> np.ndarray:
    """(n, 3) nearly uniform unit vectors (Fibonacci lattice); equal-area weights 4 pi / n."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = np.pi * (1.0 + 5.0**0.5) * k
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def implicit_surface(q_nm: np.ndarray, shape_matrix: np.ndarray, coeff: np.ndarray) -> np.ndarray:
    """F(q) = sqrt(q^T M q) - s(q / |q|) of one body at points q (M, 3) relative to its centre.

    Negative inside, positive outside, in units of the body's relative radius (F = 0.01: 1 % outside).
    """
    quad = np.einsum("mi,ij,mj->m", q_nm, shape_matrix, q_nm)
    u = q_nm / np.linalg.norm(q_nm, axis=1, keepdims=True)
    return np.sqrt(quad) - 1.0 - eval_monomials(u, _degree_from_count(len(coeff))) @ coeff


@cache
def _sphere_tables(degree: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quadrature directions (S, 3), their monomials (S, K) and outer products u_i u_j (S, 6; upper triangle)."""
    dirs = fibonacci_sphere()
    iu = np.triu_indices(3)
    outer = dirs[:, iu[0]] * dirs[:, iu[1]] * np.where(iu[0] == iu[1], 1.0, 2.0)
    return dirs, eval_monomials(dirs, degree), outer


def radial_distance_nm(shape_matrix: np.ndarray, coeff: np.ndarray) -> np.ndarray:
    """(N, S) distance from each centre to its surface along the quadrature directions ``fibonacci_sphere()``.

    shape_matrix (N, 3, 3); coeff (N, K).
    """
    dirs, mono, outer = _sphere_tables(_degree_from_count(coeff.shape[1]))
    iu = np.triu_indices(3)
    quad = shape_matrix[:, iu[0], iu[1]] @ outer.T  # u^T M u for every (primary, direction)
    return (1.0 + coeff @ mono.T) / np.sqrt(quad)


def sample_truncated_lognormal(
    n: int, gmean: float, gsd: float, lo: float, hi: float, rng: np.random.Generator
) -> np.ndarray:
    """Log-normal samples restricted to [lo, hi] by inverse-CDF sampling (no clipping pile-up)."""
    if gsd == 1.0:
        return np.full(n, float(np.clip(gmean, lo, hi)))
    mu, sigma = np.log(gmean), np.log(gsd)
    p_lo, p_hi = ndtr((np.log(lo) - mu) / sigma), ndtr((np.log(hi) - mu) / sigma)
    p = p_lo + (p_hi - p_lo) * rng.random(n)
    return np.exp(mu + sigma * ndtri(np.clip(p, 1e-12, 1 - 1e-12)))


def sample_primaries(n: int, cfg: PrimaryConfig, rng: np.random.Generator) -> Primaries:
    """Draw n primaries (sizes, orientations, shapes) centred at the origin, aggregate_id 0."""
    diameter_nm = sample_truncated_lognormal(
        n, cfg.diameter_gmean_nm, cfg.diameter_gsd, cfg.diameter_min_nm, cfg.diameter_max_nm, rng
    )
    radius_nm = diameter_nm / 2
    if cfg.shape == "sphere":
        aspect = np.ones(n)
    else:
        aspect = np.exp(rng.normal(np.log(cfg.aspect_ratio_gmean), np.log(cfg.aspect_ratio_gsd), n))
        aspect = np.maximum(aspect, 1.0 / aspect)
    quat = rng.standard_normal((n, 4))
    rotation = Rotation.from_quat(quat / np.linalg.norm(quat, axis=1, keepdims=True)).as_matrix()
    degree = cfg.roughness_degree
    n_mono = len(monomial_exponents(degree))
    dirs, mono, _ = _sphere_tables(degree)
    if cfg.shape == "irregular" and cfg.roughness > 0:
        raw = rng.standard_normal((n, n_mono))
        values = raw @ mono.T  # (n, S)
        mean, std = values.mean(axis=1), values.std(axis=1)
        coeff = raw / std[:, None]
        coeff[:, 0] -= mean / std
        coeff *= cfg.roughness
    else:
        coeff = np.zeros((n, n_mono))
    # Prolate ellipsoid of unit volume-equivalent radius, then rescale to the drawn volume.
    unit_axes = np.stack([aspect ** (2 / 3), aspect ** (-1 / 3), aspect ** (-1 / 3)], axis=1)
    unit_matrix = np.einsum("nij,nj,nkj->nik", rotation, 1.0 / unit_axes**2, rotation)
    dist = radial_distance_nm(unit_matrix, coeff)  # (n, S), for unit volume-equivalent radius
    volume_rel = (dist**3).mean(axis=1)  # (1/3) * 4 pi / S * sum r^3, divided by the unit sphere's 4 pi / 3
    scale_nm = radius_nm / np.cbrt(volume_rel)
    semi_axes_nm = unit_axes * scale_nm[:, None]
    shape_matrix = unit_matrix / scale_nm[:, None, None] ** 2
    perturbation = coeff @ mono.T
    margin = 0.15 * np.abs(perturbation).max(axis=1) if n else np.zeros(0)
    shell_out = 1.0 + perturbation.max(axis=1, initial=0.0) + margin
    shell_in = np.maximum(1.0 + perturbation.min(axis=1, initial=0.0) - margin, 0.2)
    # |grad F| <= |M q| / sqrt(q^T M q) + |grad_u s| / |q| <= sqrt(lambda_max(M)) + max|grad_u s| / r_min.
    grad = [mono @ (d @ coeff.T) for d in monomial_derivative_matrices(degree)]  # 3 x (S, n)
    radial = sum(g * dirs[:, axis, None] for axis, g in enumerate(grad))
    tangential2 = sum(g * g for g in grad) - radial * radial
    grad_max = 1.2 * np.sqrt(np.maximum(tangential2, 0.0).max(axis=0, initial=0.0))
    r_min_nm = shell_in * semi_axes_nm.min(axis=1)
    lipschitz_per_nm = 1.0 / semi_axes_nm.min(axis=1) + grad_max / r_min_nm
    return Primaries(
        centre_nm=np.zeros((n, 3)),
        radius_nm=radius_nm,
        semi_axes_nm=semi_axes_nm,
        shape_matrix=shape_matrix,
        coeff=coeff,
        shell_out=shell_out,
        shell_in=shell_in,
        lipschitz_per_nm=lipschitz_per_nm,
        aggregate_id=np.zeros(n, np.int32),
    )


def lowest_point_offset_nm(primaries: Primaries) -> np.ndarray:
    """(N,) z of each body's lowest surface point relative to its centre (negative).

    Exact for ellipsoids (support function); for perturbed bodies the minimum over the 1024 quadrature
    directions (a body then may rest up to a fraction of a nanometre above z = 0).
    """
    inverse = np.linalg.inv(primaries.shape_matrix)
    lowest = -np.sqrt(inverse[:, 2, 2])
    rough = np.any(primaries.coeff != 0, axis=1)
    if np.any(rough):
        dist = radial_distance_nm(primaries.shape_matrix[rough], primaries.coeff[rough])
        dirs = fibonacci_sphere()
        lowest[rough] = (dist * dirs[None, :, 2]).min(axis=1)
    return lowest
