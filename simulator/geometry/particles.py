"""Primary particles: sizes, shapes and their implicit surfaces.

Every primary is a star-shaped body around its centre c. With q = p - c and u = q / |q|, its surface is

    F(q) = sqrt(q^T M q) - s(u) = 0,

where M = R diag(1/a^2, 1/b^2, 1/c^2) R^T is an ellipsoid (semi-axes a >= b = c, rotation R) and
s(u) = 1 + sum_k coeff_k m_k(u) is a smooth radial perturbation: a random polynomial of degree <= D in the
components of u (monomials m_k), standardised to zero mean and unit standard deviation over the sphere, then
scaled by ``roughness``. Spheres and ellipsoids have coeff = 0 and s = 1. F < 0 inside, F > 0 outside, and
grad F points outwards, so the unit normal is grad F / |grad F|.

Faceted primaries (shape "faceted") are unperturbed ellipsoids cut by P planes n_k . q <= h_k: crystals with
flat faces, straight edges and rounded corners. Their surface is

    F(q) = max( sqrt(q^T M q) - 1, max_k (n_k . q / h_k - 1) ) = 0,

again negative inside and in relative radius units. The normals n_k (unit, world axes) are a Fibonacci set of
P directions turned by a random rotation per primary; h_k = depth_k * sqrt(n_k^T M^-1 n_k) puts each plane at a
fraction depth_k of the ellipsoid's extent along n_k (depth 1: the plane only touches it).

Sizes are volume-equivalent diameters drawn from a truncated log-normal; every body is rescaled so that its
volume equals that of the sphere of the drawn diameter (numerical quadrature for perturbed and cut bodies).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from itertools import combinations

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
    planes: np.ndarray  # (N, P, 4) cut planes (n_x, n_y, n_z, h_nm): n . q <= h; P = 0 for uncut bodies

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
        fields["shape_matrix"] = fixed_order_matmul(fixed_order_matmul(rotation, self.shape_matrix), rotation.T)
        planes = self.planes.copy()
        planes[..., :3] = fixed_order_matmul(planes[..., :3], rotation.T)
        fields["planes"] = planes
        return Primaries(**fields)

    @staticmethod
    def concatenate(parts: list[Primaries]) -> Primaries:
        return Primaries(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in Primaries.__slots__})


def fixed_order_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b (broadcast over leading axes) summed in a fixed order by numpy's einsum loop, not BLAS: BLAS
    splits large products over threads and rounds differently with the thread count, and a dataset must be
    byte-identical whether it was written by one process, several, or dask workers limited to one thread."""
    return np.einsum("...ik,...kj->...ij", a, b)


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


def implicit_surface(
    q_nm: np.ndarray, shape_matrix: np.ndarray, coeff: np.ndarray, planes: np.ndarray | None = None
) -> np.ndarray:
    """F(q) = sqrt(q^T M q) - s(q / |q|) of one body at points q (M, 3) relative to its centre; with cut
    ``planes`` (P, 4), the maximum of that and n_k . q / h_k - 1 over the planes.

    Negative inside, positive outside, in units of the body's relative radius (F = 0.01: 1 % outside).
    """
    quad = np.einsum("mi,ij,mj->m", q_nm, shape_matrix, q_nm)
    u = q_nm / np.linalg.norm(q_nm, axis=1, keepdims=True)
    f = np.sqrt(quad) - 1.0 - eval_monomials(u, _degree_from_count(len(coeff))) @ coeff
    if planes is not None and len(planes):
        f = np.maximum(f, (q_nm @ planes[:, :3].T / planes[:, 3] - 1.0).max(axis=1))
    return f


@cache
def _sphere_tables(degree: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quadrature directions (S, 3), their monomials (S, K) and outer products u_i u_j (S, 6; upper triangle)."""
    dirs = fibonacci_sphere()
    iu = np.triu_indices(3)
    outer = dirs[:, iu[0]] * dirs[:, iu[1]] * np.where(iu[0] == iu[1], 1.0, 2.0)
    return dirs, eval_monomials(dirs, degree), outer


def radial_distance_nm(shape_matrix: np.ndarray, coeff: np.ndarray, planes: np.ndarray | None = None) -> np.ndarray:
    """(N, S) distance from each centre to its surface along the quadrature directions ``fibonacci_sphere()``.

    shape_matrix (N, 3, 3); coeff (N, K); planes (N, P, 4) or None (bodies contain their centre: h > 0).
    """
    dirs, mono, outer = _sphere_tables(_degree_from_count(coeff.shape[1]))
    iu = np.triu_indices(3)
    quad = fixed_order_matmul(shape_matrix[:, iu[0], iu[1]], outer.T)  # u^T M u for every (primary, direction)
    dist = (1.0 + fixed_order_matmul(coeff, mono.T)) / np.sqrt(quad)
    if planes is not None and planes.shape[1]:
        facing = fixed_order_matmul(planes[:, :, :3], dirs.T)  # (N, P, S): n_k . u
        cut = np.where(facing > 1e-12, planes[:, :, 3:] / np.maximum(facing, 1e-12), np.inf).min(axis=1)
        dist = np.minimum(dist, cut)
    return dist


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
        values = fixed_order_matmul(raw, mono.T)  # (n, S)
        mean, std = values.mean(axis=1), values.std(axis=1)
        coeff = raw / std[:, None]
        coeff[:, 0] -= mean / std
        coeff *= cfg.roughness
    else:
        coeff = np.zeros((n, n_mono))
    # Prolate ellipsoid of unit volume-equivalent radius, then rescale to the drawn volume.
    unit_axes = np.stack([aspect ** (2 / 3), aspect ** (-1 / 3), aspect ** (-1 / 3)], axis=1)
    unit_matrix = np.einsum("nij,nj,nkj->nik", rotation, 1.0 / unit_axes**2, rotation)
    planes = np.zeros((n, 0, 4))
    if cfg.shape == "faceted":
        planes = _cut_planes(unit_matrix, cfg, rng)
    dist = radial_distance_nm(unit_matrix, coeff, planes)  # (n, S), for unit volume-equivalent radius
    volume_rel = (dist**3).mean(axis=1)  # (1/3) * 4 pi / S * sum r^3, divided by the unit sphere's 4 pi / 3
    scale_nm = radius_nm / np.cbrt(volume_rel)
    planes[..., 3] *= scale_nm[:, None]
    semi_axes_nm = unit_axes * scale_nm[:, None]
    shape_matrix = unit_matrix / scale_nm[:, None, None] ** 2
    perturbation = fixed_order_matmul(coeff, mono.T)
    margin = 0.15 * np.abs(perturbation).max(axis=1) if n else np.zeros(0)
    shell_out = 1.0 + perturbation.max(axis=1, initial=0.0) + margin
    shell_in = np.maximum(1.0 + perturbation.min(axis=1, initial=0.0) - margin, 0.2)
    # |grad F| <= |M q| / sqrt(q^T M q) + |grad_u s| / |q| <= sqrt(lambda_max(M)) + max|grad_u s| / r_min.
    grad = [fixed_order_matmul(mono, fixed_order_matmul(d, coeff.T))  # 3 x (S, n)
            for d in monomial_derivative_matrices(degree)]
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
        planes=planes,
    )


def _cut_planes(unit_matrix: np.ndarray, cfg: PrimaryConfig, rng: np.random.Generator) -> np.ndarray:
    """(n, P, 4) cut planes of faceted bodies: a randomly turned Fibonacci set of P normals, each plane at
    depth_k = facet_depth * exp(facet_depth_spread * N(0, 1)) (at most 1) of the ellipsoid's support value."""
    n = len(unit_matrix)
    quat = rng.standard_normal((n, 4))
    turns = Rotation.from_quat(quat / np.linalg.norm(quat, axis=1, keepdims=True)).as_matrix()
    normals = np.einsum("nij,pj->npi", turns, fibonacci_sphere(cfg.facet_planes))  # (n, P, 3)
    support = np.sqrt(np.einsum("npi,nij,npj->np", normals, np.linalg.inv(unit_matrix), normals))
    depth = np.minimum(cfg.facet_depth * np.exp(cfg.facet_depth_spread * rng.standard_normal(support.shape)), 1.0)
    return np.concatenate([normals, (depth * support)[..., None]], axis=2)


def lowest_point_offset_nm(primaries: Primaries) -> np.ndarray:
    """(N,) z of each body's lowest surface point relative to its centre (negative).

    Exact for ellipsoids (support function) and for cut ellipsoids (``_lowest_cut_point_nm``, closed forms);
    for perturbed bodies the minimum over the 1024 quadrature directions (a body then may rest up to a fraction
    of a nanometre above z = 0).
    """
    inverse = np.linalg.inv(primaries.shape_matrix)
    lowest = -np.sqrt(inverse[:, 2, 2])
    rough = np.any(primaries.coeff != 0, axis=1)
    if np.any(rough):
        dist = radial_distance_nm(primaries.shape_matrix[rough], primaries.coeff[rough])
        dirs = fibonacci_sphere()
        lowest[rough] = (dist * dirs[None, :, 2]).min(axis=1)
    if primaries.planes.shape[1]:
        cut = ~rough
        lowest[cut] = _lowest_cut_point_nm(primaries.shape_matrix[cut], primaries.planes[cut])
    return lowest


def _lowest_cut_point_nm(shape_matrix: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """(N,) lowest z of cut ellipsoids {q^T M q <= 1, n_k . q <= h_k} relative to their centres, exact.

    A linear function's minimum over this convex body lies in the relative interior of one face of it: the
    ellipsoid's own surface, the ellipse where one plane cuts it, the chord along the edge of two planes, or a
    vertex of three. Each kind has a closed-form lowest point (with A = M^-1 for the ellipsoid and the cut
    ellipses; a quadratic for the chords; a 3 x 3 solve for the vertices); the answer is the lowest candidate
    that satisfies every constraint.
    """
    n, p = planes.shape[:2]
    a = np.linalg.inv(shape_matrix)  # (N, 3, 3)
    normal, h = planes[..., :3], planes[..., 3]
    candidates = [(-a[:, :, 2] / np.sqrt(a[:, 2, 2])[:, None])[:, None]]  # ellipsoid's own lowest point
    # One plane: the cut ellipse's centre q_c = h A n / (n A n), then its lowest point in the A-metric.
    an = np.einsum("nij,npj->npi", a, normal)
    nan = np.einsum("npi,npi->np", normal, an)
    can = an[..., 2]  # e_z^T A n
    rho2 = 1.0 - h * h / nan
    direction = a[:, None, :, 2] - (can / nan)[..., None] * an  # A e_z projected along A n
    length = np.sqrt(np.maximum(a[:, None, 2, 2] - can * can / nan, 1e-300))
    one = (h / nan)[..., None] * an - (np.sqrt(np.maximum(rho2, 0.0)) / length)[..., None] * direction
    candidates.append(np.where((rho2 > 0)[..., None], one, np.nan))
    # Two planes: the edge line q0 + s d (q0 in the span of both normals) meets the ellipsoid at two points.
    first, second = np.triu_indices(p, 1)
    nk, nl = normal[:, first], normal[:, second]
    gkl = np.einsum("npi,npi->np", nk, nl)
    det = 1.0 - gkl * gkl
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = (h[:, first] - gkl * h[:, second]) / det
        beta = (h[:, second] - gkl * h[:, first]) / det
        q0 = alpha[..., None] * nk + beta[..., None] * nl
        d = np.cross(nk, nl)
        md = np.einsum("nij,npj->npi", shape_matrix, d)
        qa = np.einsum("npi,npi->np", d, md)
        qb = np.einsum("npi,npi->np", q0, md)
        qc = np.einsum("npi,nij,npj->np", q0, shape_matrix, q0) - 1.0
        disc = qb * qb - qa * qc
        s_pm = (-qb[..., None] + np.array([-1.0, 1.0]) * np.sqrt(np.maximum(disc, 0.0))[..., None]) / qa[..., None]
        ends = q0[..., None, :] + s_pm[..., None] * d[..., None, :]  # (N, pairs, 2, 3)
        ok = (disc > 0) & (det > 1e-12)
        candidates.append(np.where(ok[..., None, None], ends, np.nan).reshape(n, -1, 3))
        # Three planes: a vertex.
        tri = np.array(list(combinations(range(p), 3)), dtype=np.int64).reshape(-1, 3)
        mats = normal[:, tri]  # (N, T, 3, 3)
        dets = np.linalg.det(mats)
        safe = np.where(np.abs(dets)[..., None, None] > 1e-9, mats, np.eye(3))
        vertex = np.linalg.solve(safe, h[:, tri][..., None])[..., 0]
        candidates.append(np.where((np.abs(dets) > 1e-9)[..., None], vertex, np.nan))
    points = np.concatenate(candidates, axis=1)  # (N, C, 3)
    scale = np.sqrt(np.linalg.eigvalsh(a)[:, -1])[:, None]  # the longest semi-axis
    inside = np.einsum("nci,nij,ncj->nc", points, shape_matrix, points) <= 1.0 + 1e-9
    inside &= np.all(np.einsum("nci,npi->ncp", points, normal) <= h[:, None, :] + 1e-9 * scale[..., None], axis=2)
    z = np.where(inside, points[..., 2], np.inf)
    return z.min(axis=1)
