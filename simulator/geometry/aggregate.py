"""Tunable 3-D fractal aggregates of polydisperse spherical primaries (FracVAL-like).

The aggregate follows the fractal law ``N = kf (Rg / a)^Df`` (Moran et al., "FracVAL", Comput. Phys.
Commun. 2019), with the conventions

* ``a`` = geometric mean radius of the aggregate's own primaries (FracVAL's polydisperse convention);
* ``Rg`` = mass-weighted radius of gyration including each sphere's own moment, mass ~ r^3 (overlap
  volumes are not subtracted): ``Rg^2 = sum r_i^3 (|x_i - x_cm|^2 + 3/5 r_i^2) / sum r_i^3``;
* necking: stuck primaries have centre distance ``(r_i + r_j)(1 - overlap)``, i.e. their "shrunk" spheres of
  radius ``r (1 - overlap)`` touch; no two shrunk spheres may interpenetrate.

Algorithm. Primaries are shuffled and split into sub-clusters of ~10 % of N (at least 8), which are grown one
by one by tunable particle-cluster aggregation (PCA); sub-clusters of similar size are then joined pairwise by
tunable cluster-cluster aggregation (CCA) until one remains. Either way a cluster B (one primary in PCA) is
stuck to cluster A with its centre of mass at the distance Gamma from A's given by the parallel-axis theorem,
``M3 Rg3^2 = M1 Rg1^2 + M2 Rg2^2 + M1 M2 / M3 Gamma^2``, with Rg3 the law's target for the merged cluster
and Rg1, Rg2 the *actual* values of the parts (so deviations do not accumulate). A random pair of primaries
(i in A, j in B) that can touch at that distance is brought into contact, B randomly oriented about the
contact (in CCA only contact directions that are locally free on both sides are kept). Candidates are drawn
in batches and tested one at a time against all primaries; the first one free of overlaps is kept. If the
parts are already too large for the target (no real Gamma), the most compact free candidate of a few batches
is taken instead. If nothing free is found, Gamma is relaxed step by step towards the largest reachable
distance, where the two outermost primaries placed in line are overlap-free by construction, so every call
terminates with a valid, connected aggregate.

Implementation. Everything after input validation runs in one numba-compiled call (the sizes of interest,
N ~ 1..60 and ~20 aggregates per image, are dominated by per-call overhead otherwise); 3-vectors are tuples,
so the inner loops allocate nothing. Randomness comes only from the caller's ``numpy.random.Generator``,
which the compiled code advances in place. Internally all lengths are dimensionless, in units of the
geometric-mean radius of all N primaries.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import NamedTuple

import numba
import numpy as np

__all__ = ["MAX_PRIMARIES", "build_aggregate", "radius_of_gyration_nm"]

MAX_PRIMARIES = 4096
_SPHERE_RG2_FACTOR = 0.6  # Rg^2 of a homogeneous sphere = 3/5 r^2
_BATCH = 16  # candidate placements per batch (CCA: locally exposed candidates per batch)
_COMPACT_BATCHES = 4  # batches for the most compact free placement when the target Gamma does not exist
_CANDIDATES = 256  # CCA contact candidates drawn per batch at most (the exposed ones, at most _BATCH, get tested)
# Shrunk spheres count as interpenetrating if |x - p|^2 < (r_x + r_p)^2 - _ROUNDING_SLACK (|x|^2 + |p|^2): the
# slack only absorbs float rounding (exact contacts must pass).
_ROUNDING_SLACK = 1e-13
_FEASIBLE_RTOL = 1e-12  # relative slack when testing whether a pair can touch at a given Gamma
_TINY = 1e-12  # lengths below this (units of a) count as zero
_DEGENERATE = 1e-4  # relative size below which a vector's perpendicular part is too ill-conditioned to use
_SUBCLUSTER_FRACTION = 0.1
_MIN_SUBCLUSTER = 8
# (fraction of the way from the target Gamma to the largest reachable Gamma, number of batches). Candidates
# are cheap (compiled, tested lazily), so the target and the first small relaxations get most of the budget:
# dense targets (Df ~ 2.6) then rarely need the coarser steps that spoil the law.
_RELAX_SCHEDULE = (
    (0.0, 16),
    (0.005, 8),
    (0.01, 8),
    (0.02, 4),
    (0.03, 4),
    (0.05, 4),
    (0.07, 2),
    (0.1, 2),
    (0.15, 2),
    (0.3, 2),
    (0.5, 2),
    (0.75, 2),
)

_jit = numba.njit(cache=True, error_model="numpy")

_Vec3 = tuple[float, float, float]  # compiled code: 3-vectors as tuples (no allocation)
_Mat3 = tuple[_Vec3, _Vec3, _Vec3]  # rows


class _SearchPlan(NamedTuple):
    """How hard to search before relaxing Gamma further (see ``_RELAX_SCHEDULE``, ``_COMPACT_BATCHES``)."""

    relax_fractions: np.ndarray  # (S,) float64
    relax_batches: np.ndarray  # (S,) int64
    compact_batches: int


class _Primaries(NamedTuple):
    """Per-primary constants (lengths in units of the geometric-mean radius) and the target law."""

    radius: np.ndarray  # (N,)
    shrunk: np.ndarray  # (N,) radius * (1 - overlap); stuck primaries = touching shrunk spheres
    mass: np.ndarray  # (N,) radius^3
    log_radius: np.ndarray  # (N,)
    df: float
    kf: float


class _Side(NamedTuple):
    """One centred cluster's primaries as seen by the sticking code."""

    centres: np.ndarray  # (n, 3) relative to the cluster's centre of mass
    dist: np.ndarray  # (n,) |centres|
    shrunk: np.ndarray  # (n,) shrunk radii
    extent: np.ndarray  # (n,) dist + shrunk


def _search_plan(schedule: tuple[tuple[float, int], ...], compact_batches: int) -> _SearchPlan:
    """The relaxation schedule as the arrays the compiled code takes."""
    fractions = np.array([f for f, _ in schedule], dtype=np.float64)
    batches = np.array([b for _, b in schedule], dtype=np.int64)
    return _SearchPlan(fractions, batches, int(compact_batches))


_SEARCH_PLAN = _search_plan(_RELAX_SCHEDULE, _COMPACT_BATCHES)


# ----------------------------------------------------------------------------------------------- public API
def build_aggregate(
    radii_nm: np.ndarray,
    *,
    fractal_dimension: float,
    fractal_prefactor: float,
    overlap: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Build one fractal aggregate.

    Parameters
    ----------
    radii_nm : (N,) primary radii in nm, positive and finite, 1 <= N <= 4096.
    fractal_dimension : target Df in [1, 3].
    fractal_prefactor : target kf > 0.
    overlap : necking overlap in [0, 0.5); stuck primaries have centre distance (r_i + r_j)(1 - overlap).
    rng : numpy Generator, the only source of randomness (same state -> identical result).

    Returns
    -------
    (N, 3) float64 centres in nm; row i belongs to ``radii_nm[i]``; volume-weighted (r^3) centre of mass at
    the origin. The targeted Rg is that of :func:`radius_of_gyration_nm`, ``a`` the geometric mean radius.
    """
    radii_nm = _validated_radii(radii_nm)
    df = _validated_number("fractal_dimension", fractal_dimension, 1.0, 3.0, low_open=False, high_open=False)
    kf = _validated_number("fractal_prefactor", fractal_prefactor, 0.0, np.inf, low_open=True, high_open=True)
    ov = _validated_number("overlap", overlap, 0.0, 0.5, low_open=False, high_open=True)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")

    if radii_nm.size == 1:
        return np.zeros((1, 3))
    a_nm = float(np.exp(np.log(radii_nm).mean()))
    return _build_unit(radii_nm / a_nm, ov, df, kf, _SEARCH_PLAN, rng) * a_nm


def radius_of_gyration_nm(centres_nm: np.ndarray, radii_nm: np.ndarray) -> float:
    """Radius of gyration (nm) as targeted by :func:`build_aggregate` (FracVAL's polydisperse definition).

    ``Rg^2 = sum_i m_i (|x_i - x_cm|^2 + 3/5 r_i^2) / sum_i m_i`` with mass ``m_i ~ r_i^3`` (overlap
    volumes not subtracted) and ``x_cm`` the mass-weighted centre; 3/5 r^2 is a solid sphere's own Rg^2.
    """
    radii_nm = _validated_radii(radii_nm)
    centres_nm = np.asarray(centres_nm, dtype=np.float64)
    if centres_nm.shape != (radii_nm.size, 3):
        raise ValueError(f"centres_nm must have shape ({radii_nm.size}, 3), got {centres_nm.shape}")
    mass = (radii_nm / radii_nm.max()) ** 3
    rel_nm = centres_nm - mass @ centres_nm / mass.sum()
    second_nm2 = np.einsum("i,ij,ij->", mass, rel_nm, rel_nm) + _SPHERE_RG2_FACTOR * (mass @ radii_nm**2)
    return float(np.sqrt(second_nm2 / mass.sum()))


# ----------------------------------------------------------------------------------------------- validation
def _validated_radii(radii_nm: np.ndarray) -> np.ndarray:
    """(N,) float64 copy of the radii (nm) after checking shape, size, sign and finiteness."""
    try:
        radii = np.array(radii_nm, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"radii_nm must be an array of numbers, got {radii_nm!r}") from exc
    if radii.ndim != 1:
        raise ValueError(f"radii_nm must be 1-D, got shape {radii.shape}")
    if not 1 <= radii.size <= MAX_PRIMARIES:
        raise ValueError(f"radii_nm must hold 1 to {MAX_PRIMARIES} radii, got {radii.size}")
    bad = ~(np.isfinite(radii) & (radii > 0.0))
    if bad.any():
        raise ValueError(f"radii_nm must be positive and finite, got {radii[bad][0]!r} at index {bad.argmax()}")
    return radii


def _validated_number(name: str, value: float, low: float, high: float, *, low_open: bool, high_open: bool) -> float:
    """``value`` as float after checking it is a finite real number in the given interval."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a real number in {interval}, got {value!r}")
    x = float(value)
    too_low = x <= low if low_open else x < low
    too_high = x >= high if high_open else x > high
    if not math.isfinite(x) or too_low or too_high:
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return x


# ----------------------------------------------------------------------------------------------- 3-vectors
@_jit
def _row(a: np.ndarray, i: int) -> _Vec3:
    return (a[i, 0], a[i, 1], a[i, 2])


@_jit
def _set_row(a: np.ndarray, i: int, v: _Vec3) -> None:
    a[i, 0], a[i, 1], a[i, 2] = v


@_jit
def _dot(u: _Vec3, v: _Vec3) -> float:
    return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]


@_jit
def _add(u: _Vec3, v: _Vec3) -> _Vec3:
    return (u[0] + v[0], u[1] + v[1], u[2] + v[2])


@_jit
def _sub(u: _Vec3, v: _Vec3) -> _Vec3:
    return (u[0] - v[0], u[1] - v[1], u[2] - v[2])


@_jit
def _scaled(c: float, u: _Vec3) -> _Vec3:
    return (c * u[0], c * u[1], c * u[2])


@_jit
def _cross(u: _Vec3, v: _Vec3) -> _Vec3:
    return (u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0])


@_jit
def _unit(u: _Vec3) -> _Vec3:
    return _scaled(1.0 / math.sqrt(_dot(u, u)), u)


@_jit
def _combined(c0: float, v0: _Vec3, c1: float, v1: _Vec3, c2: float, v2: _Vec3) -> _Vec3:
    """c0 v0 + c1 v1 + c2 v2."""
    return _add(_add(_scaled(c0, v0), _scaled(c1, v1)), _scaled(c2, v2))


@_jit
def _rotated(rotation: _Mat3, v: _Vec3) -> _Vec3:
    return (_dot(rotation[0], v), _dot(rotation[1], v), _dot(rotation[2], v))


@_jit
def _frame_rotation(src: _Mat3, dst: _Mat3) -> _Mat3:
    """Rotation mapping the orthonormal frame ``src`` (three vectors) onto ``dst``: sum_k dst_k src_k^T."""
    (a0, a1, a2), (b0, b1, b2) = src, dst
    return (
        _combined(b0[0], a0, b1[0], a1, b2[0], a2),
        _combined(b0[1], a0, b1[1], a1, b2[1], a2),
        _combined(b0[2], a0, b1[2], a1, b2[2], a2),
    )


@_jit
def _random_unit(rng: np.random.Generator) -> _Vec3:
    """Isotropic random unit vector."""
    while True:
        g = (rng.standard_normal(), rng.standard_normal(), rng.standard_normal())
        g2 = _dot(g, g)
        if g2 > _TINY:
            return _scaled(1.0 / math.sqrt(g2), g)


@_jit
def _random_perpendicular(axis: _Vec3, rng: np.random.Generator) -> _Vec3:
    """Unit vector perpendicular to ``axis``, uniformly distributed around it (Gram-Schmidt projection of a
    Gaussian vector); isotropic if ``axis`` is ~0."""
    axis2 = _dot(axis, axis)
    if axis2 <= _TINY * _TINY:
        return _random_unit(rng)
    while True:
        g = (rng.standard_normal(), rng.standard_normal(), rng.standard_normal())
        w = _sub(g, _scaled(_dot(g, axis) / axis2, axis))
        w2 = _dot(w, w)
        if w2 > _DEGENERATE * _DEGENERATE * _dot(g, g):
            return _scaled(1.0 / math.sqrt(w2), w)


@_jit
def _cos_for_distance(dist2: float, s: float, d: float) -> float:
    """cos of the angle, on a sphere of radius ``d`` centred at distance ``s`` from the origin, between the
    outward radial direction and the point at squared distance ``dist2`` from the origin (law of cosines),
    clipped to [-1, 1]; 0 if s ~ 0 (there every point is at distance d)."""
    if s <= _TINY:
        return 0.0
    return min(max((dist2 - s * s - d * d) / (2.0 * s * d), -1.0), 1.0)


@_jit
def _point_on_sphere(centre: _Vec3, centre_norm: float, radius: float, cos_t: float, rng: np.random.Generator) -> _Vec3:
    """``centre + radius * u``, u at angle acos(cos_t) from the centre's direction (seen from the origin) with
    uniformly random azimuth around it."""
    along = 1.0 + radius * cos_t / max(centre_norm, _TINY)
    across = radius * math.sqrt(max(1.0 - cos_t * cos_t, 0.0))
    return _add(_scaled(along, centre), _scaled(across, _random_perpendicular(centre, rng)))


@_jit
def _sphere_is_free(x: _Vec3, shrunk_x: float, side: _Side) -> bool:
    """Whether the shrunk sphere at ``x`` (radius ``shrunk_x``) interpenetrates none of ``side``'s (exact
    contacts pass)."""
    x2 = _dot(x, x)
    for k in range(side.dist.size):
        v = _sub(x, _row(side.centres, k))
        reach = shrunk_x + side.shrunk[k]
        if _dot(v, v) - reach * reach + _ROUNDING_SLACK * (x2 + side.dist[k] * side.dist[k]) < 0.0:
            return False
    return True


# ----------------------------------------------------------------------------------------------- fractal law
@_jit
def _target_rg2(log_radius_sum: float, n: int, df: float, kf: float) -> float:
    """Rg^2 the fractal law asks of n primaries whose log-radii sum to ``log_radius_sum``."""
    return math.exp(2.0 * log_radius_sum / n) * (n / kf) ** (2.0 / df)


@_jit
def _gamma(m1: float, rg2_1: float, m2: float, rg2_2: float, rg2_target: float) -> float:
    """Centre-of-mass distance giving the merged cluster the target Rg^2 (parallel-axis theorem); NaN if no
    real distance exists (the parts are already too large)."""
    m3 = m1 + m2
    radicand = m3 * (m3 * rg2_target - m1 * rg2_1 - m2 * rg2_2) / (m1 * m2)
    return math.sqrt(radicand) if radicand > 0.0 else math.nan


@_jit
def _start_gamma(target: float, lowest: float, highest: float) -> float:
    """First Gamma of the relaxation schedule: the target clipped to [lowest, highest] (``lowest`` if NaN)."""
    return lowest if math.isnan(target) else min(max(target, lowest), highest)


@_jit
def _subcluster_sizes(n: int) -> np.ndarray:
    """Sizes of the PCA sub-clusters: summing to n, differing by at most 1, each >= 2 for n >= 2."""
    target = max(_MIN_SUBCLUSTER, int(_SUBCLUSTER_FRACTION * n))
    count = (n + target - 1) // target
    sizes = np.full(count, n // count, dtype=np.int64)
    sizes[: n % count] += 1
    return sizes


@_jit
def _recentre(pos: np.ndarray, ids: np.ndarray, mass: np.ndarray) -> None:
    """Shift the rows ``ids`` of ``pos`` so that their mass-weighted centre is at the origin."""
    total, moment = 0.0, (0.0, 0.0, 0.0)
    for i in ids:
        total += mass[i]
        moment = _add(moment, _scaled(mass[i], _row(pos, i)))
    centre = _scaled(1.0 / total, moment)
    for i in ids:
        _set_row(pos, i, _sub(_row(pos, i), centre))


@_jit
def _cluster_rg2(pos: np.ndarray, ids: np.ndarray, prim: _Primaries) -> float:
    """Rg^2 of the cluster ``ids`` (rows of ``pos``), whose centre of mass is at the origin."""
    total = second = 0.0
    for i in ids:
        x = _row(pos, i)
        total += prim.mass[i]
        second += prim.mass[i] * (_dot(x, x) + _SPHERE_RG2_FACTOR * prim.radius[i] ** 2)
    return second / total


# ----------------------------------------------------------------------------------------------- driver
@_jit
def _build_unit(
    radius: np.ndarray, overlap: float, df: float, kf: float, plan: _SearchPlan, rng: np.random.Generator
) -> np.ndarray:
    """(N, 3) centres (N >= 2) in units of the geometric-mean radius, for radii ``radius`` in those units:
    PCA sub-clusters, then CCA generations until one cluster remains; centre of mass at the origin."""
    n = radius.size
    prim = _Primaries(radius, radius * (1.0 - overlap), radius**3, np.log(radius), df, kf)
    pos = np.zeros((n, 3))
    order = rng.permutation(n)
    clusters = []
    start = 0
    for size in _subcluster_sizes(n):
        ids = order[start : start + size].copy()
        _grow_cluster(ids, pos, prim, plan, rng)
        clusters.append(ids)
        start += size
    while len(clusters) > 1:
        clusters = _merge_level(clusters, pos, prim, plan, rng)
    _recentre(pos, clusters[0], prim.mass)
    return pos


# ----------------------------------------------------------------------------------------------- PCA
@_jit
def _grow_cluster(
    ids: np.ndarray, pos: np.ndarray, prim: _Primaries, plan: _SearchPlan, rng: np.random.Generator
) -> None:
    """Tunable particle-cluster aggregation of the primaries ``ids``, added in this order; writes their
    centres, relative to the sub-cluster's centre of mass, into the rows ``ids`` of ``pos``."""
    n = ids.size
    local, rel, dist, contact = np.empty((n, 3)), np.empty((n, 3)), np.empty(n), np.empty(n)
    # running sums over the members placed so far: mass, sum m x, sum m (|x|^2 + 3/5 r^2), sum log r
    m_tot, first, second, log_sum = 0.0, (0.0, 0.0, 0.0), 0.0, 0.0
    for k in range(n):
        new = ids[k]
        m_new, rg2_new = prim.mass[new], _SPHERE_RG2_FACTOR * prim.radius[new] ** 2
        log_sum += prim.log_radius[new]
        if k == 0:
            x = (0.0, 0.0, 0.0)
        elif k == 1:
            x = _scaled(prim.shrunk[ids[0]] + prim.shrunk[new], _random_unit(rng))
        else:
            cm = _scaled(1.0 / m_tot, first)
            rg2_target = _target_rg2(log_sum, k + 1, prim.df, prim.kf)
            gamma = _gamma(m_tot, second / m_tot - _dot(cm, cm), m_new, rg2_new, rg2_target)
            for m in range(k):
                v = _sub(_row(local, m), cm)
                _set_row(rel, m, v)
                dist[m] = math.sqrt(_dot(v, v))
                contact[m] = prim.shrunk[ids[m]] + prim.shrunk[new]
            x = _add(cm, _place_monomer(rel[:k], dist[:k], contact[:k], gamma, plan, rng))
        _set_row(local, k, x)
        m_tot += m_new
        first = _add(first, _scaled(m_new, x))
        second += m_new * (_dot(x, x) + rg2_new)
    cm = _scaled(1.0 / m_tot, first)
    for k in range(n):
        _set_row(pos, ids[k], _sub(_row(local, k), cm))


@_jit
def _place_monomer(
    rel: np.ndarray, dist: np.ndarray, contact: np.ndarray, gamma: float, plan: _SearchPlan, rng: np.random.Generator
) -> _Vec3:
    """Centre, relative to the cluster's centre of mass, for a new primary touching one member (centres
    ``rel``, distances ``dist`` from the centre of mass, sticking distances ``contact``) and overlapping none,
    at distance ``gamma`` from the centre of mass if possible (else relaxed; if ``gamma`` is NaN, i.e. the
    target is out of reach, first as close to the centre of mass as random free contacts allow)."""
    lowest, highest = np.abs(dist - contact).min(), (dist + contact).max()
    if math.isnan(gamma):
        found, y = _try_monomer(rel, dist, contact, math.nan, plan.compact_batches, rng)
        if found:
            return y
    start = _start_gamma(gamma, lowest, highest)
    for level in range(plan.relax_fractions.size):
        g = start + plan.relax_fractions[level] * (highest - start)
        found, y = _try_monomer(rel, dist, contact, g, plan.relax_batches[level], rng)
        if found:
            return y
    # Outermost member, radially outwards: overlap-free since every member lies within max(dist + shrunk).
    i = np.argmax(dist + contact)
    direction = _scaled(1.0 / dist[i], _row(rel, i)) if dist[i] > _TINY else _random_unit(rng)
    return _add(_row(rel, i), _scaled(contact[i], direction))


@_jit
def _try_monomer(
    rel: np.ndarray, dist: np.ndarray, contact: np.ndarray, g: float, batches: int, rng: np.random.Generator
) -> tuple[bool, _Vec3]:
    """Up to ``batches`` batches of random contacts with members that can touch at distance ``g`` from the
    centre of mass -> (found, centre): the first free one, or (``g`` NaN: any member, any direction) the
    most compact free one of the first batch that has one."""
    compact = math.isnan(g)
    best, best_y2 = (0.0, 0.0, 0.0), math.inf
    if batches <= 0:
        return False, best
    slack = _FEASIBLE_RTOL * g
    feasible = np.empty(dist.size, dtype=np.int64)
    n_feasible = 0
    for m in range(dist.size):
        if compact or (abs(dist[m] - contact[m]) <= g + slack and g <= dist[m] + contact[m] + slack):
            feasible[n_feasible] = m
            n_feasible += 1
    if n_feasible == 0:
        return False, best
    members = _Side(rel, dist, contact, dist + contact)  # shrunk := sticking distance, new primary radius 0
    for _ in range(batches):
        for _ in range(_BATCH):
            m = feasible[rng.integers(0, n_feasible)]
            cos_t = 2.0 * rng.random() - 1.0 if compact else _cos_for_distance(g * g, dist[m], contact[m])
            y = _point_on_sphere(_row(rel, m), dist[m], contact[m], cos_t, rng)
            if not _sphere_is_free(y, 0.0, members):
                continue
            if not compact:
                return True, y
            if _dot(y, y) < best_y2:
                best, best_y2 = y, _dot(y, y)
        if best_y2 < math.inf:
            return True, best
    return False, best


# ----------------------------------------------------------------------------------------------- CCA
@_jit
def _merge_level(
    clusters: list[np.ndarray], pos: np.ndarray, prim: _Primaries, plan: _SearchPlan, rng: np.random.Generator
) -> list[np.ndarray]:
    """One CCA generation: clusters ranked by size (random tie-break) merge pairwise; an odd one waits."""
    shuffled = rng.permutation(len(clusters))
    minus_size = np.empty(shuffled.size, dtype=np.int64)
    for c in range(shuffled.size):
        minus_size[c] = -clusters[shuffled[c]].size
    ranked = shuffled[np.argsort(minus_size, kind="mergesort")]
    merged = []
    for p in range(ranked.size // 2):
        merged.append(_merge_pair(clusters[ranked[2 * p]], clusters[ranked[2 * p + 1]], pos, prim, plan, rng))
    if ranked.size % 2:
        merged.append(clusters[ranked[-1]])
    return merged


@_jit
def _side(pos: np.ndarray, ids: np.ndarray, shrunk: np.ndarray) -> _Side:
    """The cluster ``ids`` (rows of ``pos``, centred) as a :class:`_Side`."""
    centres = np.empty((ids.size, 3))
    dist = np.empty(ids.size)
    for k in range(ids.size):
        x = _row(pos, ids[k])
        _set_row(centres, k, x)
        dist[k] = math.sqrt(_dot(x, x))
    radii = shrunk[ids]
    return _Side(centres, dist, radii, dist + radii)


@_jit
def _merge_pair(
    ids_a: np.ndarray, ids_b: np.ndarray, pos: np.ndarray, prim: _Primaries, plan: _SearchPlan, rng: np.random.Generator
) -> np.ndarray:
    """Tunable cluster-cluster aggregation of two centred clusters (B, the smaller one, is moved) -> the
    merged cluster's indices; its rows of ``pos`` are updated and centred."""
    ids = np.concatenate((ids_a, ids_b))
    gamma = _gamma(
        prim.mass[ids_a].sum(),
        _cluster_rg2(pos, ids_a, prim),
        prim.mass[ids_b].sum(),
        _cluster_rg2(pos, ids_b, prim),
        _target_rg2(prim.log_radius[ids].sum(), ids.size, prim.df, prim.kf),
    )
    rotation, shift = _stick_clusters(_side(pos, ids_a, prim.shrunk), _side(pos, ids_b, prim.shrunk), gamma, plan, rng)
    for i in ids_b:
        _set_row(pos, i, _add(_rotated(rotation, _row(pos, i)), shift))
    _recentre(pos, ids, prim.mass)
    return ids


@_jit
def _stick_clusters(
    a: _Side, b: _Side, gamma: float, plan: _SearchPlan, rng: np.random.Generator
) -> tuple[_Mat3, _Vec3]:
    """Rotation and shift placing centred cluster B in contact with centred cluster A without overlap, B's
    centre of mass at distance ``gamma`` from A's if possible (else relaxed; if ``gamma`` is NaN, i.e. the
    target is out of reach, first as close as random free contacts allow)."""
    highest = a.extent.max() + b.extent.max()
    if math.isnan(gamma):
        found, rotation, shift = _try_stick(a, b, math.nan, plan.compact_batches, rng)
        if found:
            return rotation, shift
    start = _start_gamma(gamma, 0.0, highest)
    for level in range(plan.relax_fractions.size):
        g = start + plan.relax_fractions[level] * (highest - start)
        found, rotation, shift = _try_stick(a, b, g, plan.relax_batches[level], rng)
        if found:
            return rotation, shift
    i, j = np.argmax(a.extent), np.argmax(b.extent)
    return _outermost_placement(
        _row(a.centres, i), a.dist[i], _row(b.centres, j), b.dist[j], a.shrunk[i] + b.shrunk[j], rng
    )


@_jit
def _near(side: _Side, other_extent: float, g: float) -> _Side:
    """The primaries of ``side`` that can come within reach of the other cluster (largest extent
    ``other_extent``) when the centres of mass are ``g`` apart (all if ``g`` is NaN)."""
    if math.isnan(g):
        return side
    keep = np.flatnonzero(side.extent + other_extent >= g * (1.0 - _FEASIBLE_RTOL))
    return _Side(side.centres[keep], side.dist[keep], side.shrunk[keep], side.extent[keep])


@_jit
def _contact_band(s: float, t: float, d: float, g: float) -> tuple[float, float]:
    """(lowest, highest) |y| for B's primary j (|q| = t) touching A's primary i (|p| = s) at centre distance
    ``d`` with the centres of mass ``g`` apart: y lies on the contact sphere around p (|s - d| .. s + d) and
    at t from B's centre of mass (|g - t| .. g + t). Empty if lowest > highest."""
    return max(abs(g - t), abs(s - d)), min(g + t, s + d)


@_jit
def _feasible_pairs(a: _Side, b: _Side, g: float) -> np.ndarray:
    """Flat indices ``i * b_size + j`` of the pairs (i in A, j in B) that can touch at distance ``g``."""
    out = np.empty(a.dist.size * b.dist.size, dtype=np.int64)
    count = 0
    for i in range(a.dist.size):
        for j in range(b.dist.size):
            lo, hi = _contact_band(a.dist[i], b.dist[j], a.shrunk[i] + b.shrunk[j], g)
            if lo <= hi * (1.0 + _FEASIBLE_RTOL):
                out[count] = i * b.dist.size + j
                count += 1
    return out[:count]


_IDENTITY: _Mat3 = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


@_jit
def _try_stick(a: _Side, b: _Side, g: float, batches: int, rng: np.random.Generator) -> tuple[bool, _Mat3, _Vec3]:
    """Up to ``batches`` batches of random exposed contacts putting B's centre of mass at distance ``g`` from
    A's -> (found, rotation, shift): the first free placement, or (``g`` NaN: any pair, any direction and
    spin) the most compact free one of the first batch that has one. A batch draws up to _CANDIDATES contact
    pairs and tests the first _BATCH exposed ones (see :func:`_exposed_placement`)."""
    best_rotation, best_shift, best_norm2 = _IDENTITY, (0.0, 0.0, 0.0), math.inf
    if batches <= 0:
        return False, best_rotation, best_shift
    compact = math.isnan(g)
    max_a = a.extent.max()
    a, b = _near(a, b.extent.max(), g), _near(b, max_a, g)
    pairs = np.empty(0, dtype=np.int64) if compact else _feasible_pairs(a, b, g)
    if not compact and pairs.size == 0:
        return False, best_rotation, best_shift
    # B primaries at squared distance >= reach2 from A's centre of mass cannot touch A
    reach2 = (max_a + b.shrunk) ** 2
    lo = hi = math.nan
    for _ in range(batches):
        exposed = 0
        for _ in range(_CANDIDATES):
            if compact:
                i, j = rng.integers(0, a.dist.size), rng.integers(0, b.dist.size)
            else:
                i, j = divmod(pairs[rng.integers(0, pairs.size)], b.dist.size)
                lo, hi = _contact_band(a.dist[i], b.dist[j], a.shrunk[i] + b.shrunk[j], g)
            ok, rotation, shift = _exposed_placement(a, i, b, j, lo, hi, g, rng)
            if not ok:
                continue
            exposed += 1
            if _placement_is_free(rotation, shift, a, b, reach2):
                if not compact:
                    return True, rotation, shift
                if _dot(shift, shift) < best_norm2:
                    best_rotation, best_shift, best_norm2 = rotation, shift, _dot(shift, shift)
            if exposed == _BATCH:
                break
        if best_norm2 < math.inf:
            return True, best_rotation, best_shift
    return False, best_rotation, best_shift


@_jit
def _placement_is_free(rotation: _Mat3, shift: _Vec3, a: _Side, b: _Side, reach2: np.ndarray) -> bool:
    """Whether B moved by ``rotation``, ``shift`` overlaps none of A's primaries; B primaries at squared
    distance >= ``reach2`` (per primary) from A's centre of mass are skipped."""
    for j in range(b.dist.size):
        x = _add(_rotated(rotation, _row(b.centres, j)), shift)
        if _dot(x, x) < reach2[j] and not _sphere_is_free(x, b.shrunk[j], a):
            return False
    return True


@_jit
def _exposed_placement(
    a: _Side, i: int, b: _Side, j: int, lo: float, hi: float, gamma: float, rng: np.random.Generator
) -> tuple[bool, _Mat3, _Vec3]:
    """A random rigid placement (ok, rotation, shift) of centred cluster B that brings B's primary j (centre
    q, |q| = t) into contact with A's primary i (centre p, |p| = s) with B's centre of mass at distance
    ``gamma`` from A's; ok is False if the draw is unusable or the contact is not locally exposed.

    j goes to y = p + d u on the contact sphere around p (|y| area-uniform in the band ``lo`` .. ``hi``) and
    A's i sits at z = q + d w in B's frame (w uniform); draws whose y touches A's or z touches B's other
    primaries are dropped. The rotation maps w onto -u; its spin about u is the one putting B's centre of mass
    c = y - R q at |c| = gamma (cosine rule, random sign); draws with no such spin are dropped.
    With ``gamma`` NaN, u is uniform and the spin random (no constraint on |c|).
    """
    p, s, q, t = _row(a.centres, i), a.dist[i], _row(b.centres, j), b.dist[j]
    d = a.shrunk[i] + b.shrunk[j]
    compact = math.isnan(gamma)
    if compact:
        cos_t = 2.0 * rng.random() - 1.0
    else:
        hi = max(hi, lo)
        cos_t = _cos_for_distance(lo * lo + rng.random() * (hi * hi - lo * lo), s, d)
    y = _point_on_sphere(p, s, d, cos_t, rng)
    u = _scaled(1.0 / d, _sub(y, p))
    w = _random_unit(rng)
    alpha = _dot(q, w)  # q = alpha w + beta e_q
    beta = math.sqrt(max(t * t - alpha * alpha, 0.0))
    g = _add(y, _scaled(alpha, u))  # c = g - beta e_t with e_t a unit vector perpendicular to u
    g_u, g2 = _dot(g, u), _dot(g, g)
    g_perp = math.sqrt(max(g2 - g_u * g_u, 0.0))
    if compact:
        cos_psi = math.cos(2.0 * math.pi * rng.random())
    else:
        cos_psi = (g2 + beta * beta - gamma * gamma) / max(2.0 * beta * g_perp, _TINY)
    # (near-)degenerate frames are skipped so that the rotation below stays orthonormal to rounding
    usable = beta > _DEGENERATE * t and g_perp > _DEGENERATE * math.sqrt(g2) and abs(cos_psi) <= 1.0
    if not (usable and _sphere_is_free(y, b.shrunk[j], a) and _sphere_is_free(_add(q, _scaled(d, w)), a.shrunk[i], b)):
        return False, _IDENTITY, (0.0, 0.0, 0.0)
    sin_psi = math.sqrt(max(1.0 - cos_psi * cos_psi, 0.0)) * (-1.0 if rng.random() < 0.5 else 1.0)
    f1 = _unit(_sub(g, _scaled(g_u, u)))
    e_t = _add(_scaled(cos_psi, f1), _scaled(sin_psi, _cross(u, f1)))
    e_q = _unit(_sub(q, _scaled(alpha, w)))
    minus_u = _scaled(-1.0, u)
    # R maps the right-handed orthonormal frame (w, e_q, w x e_q) onto (-u, e_t, -u x e_t).
    rotation = _frame_rotation((w, e_q, _cross(w, e_q)), (minus_u, e_t, _cross(minus_u, e_t)))
    return True, rotation, _sub(g, _scaled(beta, e_t))


@_jit
def _outermost_placement(
    p: _Vec3, s: float, q: _Vec3, t: float, d: float, rng: np.random.Generator
) -> tuple[_Mat3, _Vec3]:
    """Rotation and shift putting B's outermost primary (centre q, |q| = t) against A's outermost one (p,
    |p| = s) on the line through both centres of mass, random spin about it. A's shrunk spheres all lie in
    the ball |x| <= s + r_i, B's in the ball of radius t + r_j around its centre at distance s + d + t; the
    balls only touch, so this placement never overlaps."""
    e = _scaled(1.0 / s, p) if s > _TINY else _random_unit(rng)
    q_unit = _scaled(1.0 / t, q) if t > _TINY else _random_unit(rng)
    minus_e = _scaled(-1.0, e)
    a1, b1 = _random_perpendicular(q_unit, rng), _random_perpendicular(minus_e, rng)
    rotation = _frame_rotation((q_unit, a1, _cross(q_unit, a1)), (minus_e, b1, _cross(minus_e, b1)))
    return rotation, _scaled(s + d + t, e)
