"""Tunable 3-D fractal aggregates of polydisperse spherical primaries (FracVAL-like).

The aggregate follows the fractal law ``N = kf (Rg / a)^Df`` (Moran et al., "FracVAL", Comput. Phys.
Commun. 2019), with the conventions

* ``a`` = geometric mean radius of the aggregate's own primaries (FracVAL's polydisperse convention);
* ``Rg`` = mass-weighted radius of gyration including each sphere's own moment, mass ~ r^3 (overlap
  volumes are not subtracted): ``Rg^2 = sum r_i^3 (|x_i - x_cm|^2 + 3/5 r_i^2) / sum r_i^3``;
* necking: stuck primaries have centre distance ``(r_i + r_j)(1 - overlap)``, i.e. their "shrunk" spheres of
  radius ``r (1 - overlap)`` touch; no two shrunk spheres may interpenetrate.

Algorithm. Primaries are shuffled and split into sub-clusters of ~10 % of N (at least 8), which are grown
together (vectorised across sub-clusters) by tunable particle-cluster aggregation (PCA); sub-clusters of
similar size are then joined pairwise by tunable cluster-cluster aggregation (CCA) until one remains. Either
way a cluster B (one primary in PCA) is stuck to cluster A with its centre of mass at the distance Gamma from
A's given by the parallel-axis theorem, ``M3 Rg3^2 = M1 Rg1^2 + M2 Rg2^2 + M1 M2 / M3 Gamma^2``, with Rg3
the law's target for the merged cluster and Rg1, Rg2 the *actual* values of the parts (so deviations do not
accumulate). A random pair of primaries (i in A, j in B) that can touch at that distance is brought into
contact, B randomly oriented about the contact (in CCA only contact directions that are locally free on
both sides are drawn); batches of such placements are tested at once against all primaries and the first
one free of overlaps is kept. If the parts are already too large for the target (no real Gamma), the most
compact of a batch of random free contacts is taken instead. If nothing free is found, Gamma is relaxed step
by step towards the largest reachable distance, where the two outermost primaries placed in line are
overlap-free by construction, so every call terminates with a valid, connected aggregate.

Internally all lengths are dimensionless, in units of the geometric-mean radius of all N primaries.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from numbers import Real

import numpy as np

__all__ = ["MAX_PRIMARIES", "build_aggregate", "radius_of_gyration_nm"]

MAX_PRIMARIES = 4096
_SPHERE_RG2_FACTOR = 0.6  # Rg^2 of a homogeneous sphere = 3/5 r^2
_BATCH = 16  # candidate placements tested at once
_COMPACT_BATCHES = 4  # batches for the most compact free placement when the target Gamma does not exist
_CANDIDATES = 256  # CCA contact candidates pre-screened at once (the survivors, at most _BATCH, get tested)
# Shrunk spheres count as interpenetrating if |x - p|^2 < (r_x + r_p)^2 - _ROUNDING_SLACK (|x|^2 + |p|^2): the
# slack only absorbs float rounding of the expanded squared distance (exact contacts must pass).
_ROUNDING_SLACK = 1e-13
_FEASIBLE_RTOL = 1e-12  # relative slack when testing whether a pair can touch at a given Gamma
_PAIR_BUDGET = 1 << 21  # max. primary pairs tested at once in CCA (bounds memory)
_TINY = 1e-12  # lengths below this (units of a) count as zero
_DEGENERATE = 1e-4  # relative size below which a vector's perpendicular part is too ill-conditioned to use
_SUBCLUSTER_FRACTION = 0.1
_MIN_SUBCLUSTER = 8
# (fraction of the way from the target Gamma to the largest reachable Gamma, number of batches)
_RELAX_SCHEDULE = ((0.0, 4), (0.01, 2), (0.03, 2), (0.07, 2), (0.15, 2), (0.3, 2), (0.5, 2), (0.75, 2))

_LEVI_CIVITA = np.zeros((3, 3, 3))
_LEVI_CIVITA[0, 1, 2] = _LEVI_CIVITA[1, 2, 0] = _LEVI_CIVITA[2, 0, 1] = 1.0
_LEVI_CIVITA[0, 2, 1] = _LEVI_CIVITA[2, 1, 0] = _LEVI_CIVITA[1, 0, 2] = -1.0

_Cluster = tuple[np.ndarray, np.ndarray]  # (primary indices (n,), centres (n, 3) with centre of mass at 0)


@dataclass(frozen=True, slots=True)
class _Primaries:
    """Per-primary constants (lengths in units of the geometric-mean radius) and the target law."""

    radius: np.ndarray  # (N,)
    shrunk: np.ndarray  # (N,) radius * (1 - overlap); stuck primaries = touching shrunk spheres
    mass: np.ndarray  # (N,) radius^3
    log_radius: np.ndarray  # (N,)
    df: float
    kf: float


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

    n = radii_nm.size
    if n == 1:
        return np.zeros((1, 3))
    log_r_nm = np.log(radii_nm)
    a_nm = float(np.exp(log_r_nm.mean()))
    radius = radii_nm / a_nm
    prim = _Primaries(radius, radius * (1.0 - ov), radius**3, log_r_nm - np.log(a_nm), df, kf)

    clusters = _grow_clusters(rng.permutation(n), _subcluster_sizes(n), prim, rng)
    while len(clusters) > 1:
        clusters = _merge_level(clusters, prim, rng)

    idx, coords = clusters[0]
    centres = np.empty((n, 3))
    centres[idx] = coords
    return (centres - _centre_of_mass(centres, prim.mass)) * a_nm


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
    rel_nm = centres_nm - _centre_of_mass(centres_nm, mass)
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


# ----------------------------------------------------------------------------------------------- geometry
def _centre_of_mass(centres: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """(3,) mass-weighted centre of (n, 3) centres."""
    return mass @ centres / mass.sum()


def _norms(v: np.ndarray) -> np.ndarray:
    """Row norms of a (K, 3) array."""
    return np.sqrt(np.einsum("ij,ij->i", v, v))


def _cross_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cross product of two (K, 3) arrays (faster than np.cross for small K)."""
    return np.einsum("ijk,nj,nk->ni", _LEVI_CIVITA, a, b)


def _random_unit(rng: np.random.Generator) -> np.ndarray:
    """(3,) isotropic random unit vector."""
    g = rng.standard_normal(3)
    return g / np.sqrt(g @ g)


def _random_perpendicular(gauss: np.ndarray, axis: np.ndarray, axis_norm2: np.ndarray) -> np.ndarray:
    """(K, 3) unit vectors perpendicular to the rows of ``axis`` (squared norms ``axis_norm2``), uniformly
    distributed around them when ``gauss`` is (K, 3) standard normal (Gram-Schmidt projection)."""
    coef = np.einsum("ij,ij->i", gauss, axis) / np.maximum(axis_norm2, _TINY * _TINY)
    w = gauss - coef[:, None] * axis
    return w / _norms(w)[:, None]


def _cos_for_distance(dist2: np.ndarray | float, s: np.ndarray, d: np.ndarray) -> np.ndarray:
    """cos of the angle, on a sphere of radius ``d`` centred at distance ``s`` from the origin, between the
    outward radial direction and the point at squared distance ``dist2`` from the origin (law of cosines),
    clipped to [-1, 1]; 0 where s ~ 0 (there every point is at distance d)."""
    cos_t = (dist2 - s * s - d * d) / (2.0 * np.maximum(s, _TINY) * d)
    return np.where(s > _TINY, np.minimum(np.maximum(cos_t, -1.0), 1.0), 0.0)


def _points_on_spheres(
    centre: np.ndarray, centre_norm: np.ndarray, radius: np.ndarray, cos_t: np.ndarray, gauss: np.ndarray
) -> np.ndarray:
    """(K, 3) points ``centre + radius * u``, u at angle acos(cos_t) from the centre's direction (seen from
    the origin) with uniformly random azimuth around it (``gauss``: (K, 3) standard normal)."""
    along = 1.0 + radius * cos_t / np.maximum(centre_norm, _TINY)
    across = radius * np.sqrt(1.0 - cos_t * cos_t)
    perp = _random_perpendicular(gauss, centre, centre_norm * centre_norm)
    return along[:, None] * centre + across[:, None] * perp


# ----------------------------------------------------------------------------------------------- fractal law
def _target_rg2(log_radius_sum: float, n: int, df: float, kf: float) -> float:
    """Rg^2 the fractal law asks of n primaries whose log-radii sum to ``log_radius_sum``."""
    return math.exp(2.0 * log_radius_sum / n) * (n / kf) ** (2.0 / df)


def _gamma(m1: float, rg2_1: float, m2: float, rg2_2: float, rg2_target: float) -> float:
    """Centre-of-mass distance giving the merged cluster the target Rg^2 (parallel-axis theorem); NaN if no
    real distance exists (the parts are already too large)."""
    m3 = m1 + m2
    radicand = m3 * (m3 * rg2_target - m1 * rg2_1 - m2 * rg2_2) / (m1 * m2)
    return math.sqrt(radicand) if radicand > 0.0 else math.nan


def _gamma_schedule(target: float, lowest: float, highest: float) -> Iterator[tuple[float, int]]:
    """(Gamma, batches) to try: the target clipped to [lowest, highest] (``lowest`` if NaN), then relaxed
    step by step towards ``highest``."""
    start = lowest if not math.isfinite(target) else min(max(target, lowest), highest)
    for fraction, batches in _RELAX_SCHEDULE:
        yield start + fraction * (highest - start), batches


def _subcluster_sizes(n: int) -> list[int]:
    """Sizes of the PCA sub-clusters: summing to n, differing by at most 1, each >= 2 for n >= 2."""
    target = max(_MIN_SUBCLUSTER, int(_SUBCLUSTER_FRACTION * n))
    count = -(-n // target)
    base, extra = divmod(n, count)
    return [base + 1] * extra + [base] * (count - extra)


# ----------------------------------------------------------------------------------------------- PCA
def _grow_clusters(order: np.ndarray, sizes: list[int], prim: _Primaries, rng: np.random.Generator) -> list[_Cluster]:
    """Tunable particle-cluster aggregation of all sub-clusters at once: sub-cluster g takes the next
    ``sizes[g]`` primaries of ``order`` in turn, and step k adds the k-th primary to every sub-cluster that has
    one, testing one batch of candidate positions per sub-cluster in a single vectorised pass. Sub-clusters
    whose batch fails fall back to :func:`_place_monomer` (more batches, then relaxation).
    Returns (indices, centres with the centre of mass at 0) per sub-cluster."""
    n_sub, n_max = len(sizes), max(sizes)
    size = np.array(sizes)
    idx = np.zeros((n_sub, n_max), dtype=np.intp)  # rows padded with their first index
    for g, start in enumerate(np.cumsum([0, *sizes[:-1]])):
        idx[g] = order[start]
        idx[g, : sizes[g]] = order[start : start + sizes[g]]
    radius, shrunk, mass, log_r = prim.radius[idx], prim.shrunk[idx], prim.mass[idx], prim.log_radius[idx]
    pos = np.zeros((n_sub, n_max, 3))
    if n_max > 1:
        gauss = rng.standard_normal((n_sub, 3))
        pos[:, 1] = (shrunk[:, 0] + shrunk[:, 1])[:, None] * gauss / _norms(gauss)[:, None]
    m_tot = mass[:, 0] + mass[:, 1]  # stays consistent for one-primary rows: their pos[:, 1] is never used
    first = mass[:, 1, None] * pos[:, 1]  # sum of m x
    second = mass[:, 1] * np.einsum("ij,ij->i", pos[:, 1], pos[:, 1]) + _SPHERE_RG2_FACTOR * (
        mass[:, 0] * radius[:, 0] ** 2 + mass[:, 1] * radius[:, 1] ** 2
    )  # sum of m (|x|^2 + 3/5 r^2)
    log_sum = log_r[:, 0] + log_r[:, 1]
    for k in range(2, n_max):
        act = np.flatnonzero(size > k)
        cm = first[act] / m_tot[act, None]
        m_k = mass[act, k]
        log_sum[act] += log_r[act, k]
        rg2_mono = _SPHERE_RG2_FACTOR * radius[act, k] ** 2
        m3 = m_tot[act] + m_k
        rg2_now = second[act] / m_tot[act] - np.einsum("ij,ij->i", cm, cm)
        rg2_target = np.exp(2.0 * log_sum[act] / (k + 1)) * ((k + 1) / prim.kf) ** (2.0 / prim.df)
        radicand = m3 * (m3 * rg2_target - m_tot[act] * rg2_now - m_k * rg2_mono) / (m_tot[act] * m_k)
        gamma = np.sqrt(np.maximum(radicand, 0.0))
        gamma[radicand <= 0.0] = np.nan

        rel = pos[act, :k] - cm[:, None, :]
        dist = np.sqrt(np.einsum("gkx,gkx->gk", rel, rel))
        contact = shrunk[act, :k] + shrunk[act, k, None]
        new = cm + _place_monomers_once(rel, dist, contact, gamma, rng)
        for g in np.flatnonzero(np.isnan(new[:, 0])):
            new[g] = cm[g] + _place_monomer(rel[g], dist[g], shrunk[act[g], :k], shrunk[act[g], k], gamma[g], rng)
        pos[act, k] = new
        m_tot[act] = m3
        first[act] += m_k[:, None] * new
        second[act] += m_k * (np.einsum("ij,ij->i", new, new) + rg2_mono)
    cm = first / m_tot[:, None]
    return [(idx[g, : sizes[g]], pos[g, : sizes[g]] - cm[g]) for g in range(n_sub)]


def _place_monomers_once(
    rel: np.ndarray, dist: np.ndarray, contact: np.ndarray, gamma: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One batch of tunable-PCA placements for G clusters at once: (G, 3) new centres relative to each
    cluster's centre of mass, NaN rows where no candidate was free.

    ``rel`` (G, k, 3) members relative to the centre of mass, ``dist`` (G, k) their norms, ``contact`` (G, k)
    sticking distances to the new primary, ``gamma`` (G,) target distances (NaN: unreachable)."""
    n_grp, n_mem = dist.shape
    compact = np.isnan(gamma)  # target out of reach: take the most compact free candidate instead
    g_lo, g_hi = np.abs(dist - contact), dist + contact
    g = np.minimum(np.maximum(np.where(compact, 0.0, gamma), g_lo.min(axis=1)), g_hi.max(axis=1))
    slack = _FEASIBLE_RTOL * g
    feasible = (g_lo <= (g + slack)[:, None]) & (g[:, None] <= g_hi + slack[:, None]) | compact[:, None]
    keys = np.where(feasible[:, None, :], rng.random((n_grp, _BATCH, n_mem)), -1.0)
    member = keys.argmax(axis=2)  # (G, K), uniform over the feasible members
    s = np.take_along_axis(dist, member, axis=1)
    d = np.take_along_axis(contact, member, axis=1)
    p = np.take_along_axis(rel, member[:, :, None], axis=1)
    cos_t = _cos_for_distance((g * g)[:, None], s, d)
    cos_t = np.where(compact[:, None], 2.0 * rng.random((n_grp, _BATCH)) - 1.0, cos_t)
    gauss = rng.standard_normal((n_grp * _BATCH, 3))
    y = _points_on_spheres(p.reshape(-1, 3), s.ravel(), d.ravel(), cos_t.ravel(), gauss).reshape(n_grp, _BATCH, 3)
    y2 = np.einsum("gkx,gkx->gk", y, y)
    member_term = (1.0 + _ROUNDING_SLACK) * dist * dist - contact * contact
    excess = (
        ((1.0 + _ROUNDING_SLACK) * y2)[:, :, None]
        + member_term[:, None, :]
        - 2.0 * np.matmul(y, rel.transpose(0, 2, 1))
    )
    clear = (excess >= 0.0).all(axis=2) & feasible.any(axis=1)[:, None]
    # first free candidate, or the one closest to the centre of mass in compact mode
    score = np.where(clear, np.where(compact[:, None], y2, np.arange(_BATCH, dtype=float)), np.inf)
    out = y[np.arange(n_grp), score.argmin(axis=1)]
    out[~clear.any(axis=1)] = np.nan
    return out


def _place_monomer(
    rel: np.ndarray,
    dist: np.ndarray,
    shrunk: np.ndarray,
    shrunk_new: float,
    gamma: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """(3,) centre, relative to the cluster's centre of mass, for a new primary (shrunk radius ``shrunk_new``)
    touching one member (centres ``rel``, distances ``dist`` from the centre of mass, shrunk radii ``shrunk``)
    and overlapping none, at distance ``gamma`` from the centre of mass if possible (else relaxed; if ``gamma``
    is NaN, i.e. the target is out of reach, as close to the centre of mass as random free contacts allow)."""
    contact = shrunk + shrunk_new
    g_lo = np.abs(dist - contact)
    g_hi = dist + contact
    member_term = (1.0 + _ROUNDING_SLACK) * dist * dist - contact * contact
    compact = [(math.nan, _COMPACT_BATCHES)] if math.isnan(gamma) else []
    for g, batches in [*compact, *_gamma_schedule(gamma, float(g_lo.min()), float(g_hi.max()))]:
        slack = _FEASIBLE_RTOL * g
        feasible = np.flatnonzero((g_lo <= g + slack) & (g <= g_hi + slack) | math.isnan(g))
        if feasible.size == 0:
            continue
        cos_t = _cos_for_distance(g * g, dist[feasible], contact[feasible])
        for _ in range(batches):
            pick = rng.integers(feasible.size, size=_BATCH)
            member = feasible[pick]
            cos_pick = 2.0 * rng.random(_BATCH) - 1.0 if math.isnan(g) else cos_t[pick]
            y = _points_on_spheres(
                rel[member], dist[member], contact[member], cos_pick, rng.standard_normal((_BATCH, 3))
            )
            # |y - p|^2 - contact^2 (+ rounding slack) for every candidate y and member p
            y2 = np.einsum("ij,ij->i", y, y)
            excess = ((1.0 + _ROUNDING_SLACK) * y2)[:, None] + member_term - 2.0 * (y @ rel.T)
            clear = (excess >= 0.0).all(axis=1)
            if clear.any():  # first free candidate, or the most compact one if the target is out of reach
                return y[np.where(clear, y2, np.inf).argmin()] if math.isnan(g) else y[clear.argmax()]
    # Outermost member, radially outwards: overlap-free since every member lies within max(dist + shrunk).
    i = int(g_hi.argmax())
    direction = rel[i] / dist[i] if dist[i] > _TINY else _random_unit(rng)
    return rel[i] + contact[i] * direction


# ----------------------------------------------------------------------------------------------- CCA
def _merge_level(clusters: list[_Cluster], prim: _Primaries, rng: np.random.Generator) -> list[_Cluster]:
    """One CCA generation: clusters ranked by size (random tie-break) merge pairwise; an odd one waits."""
    shuffled = rng.permutation(len(clusters))
    sizes = np.array([clusters[i][0].size for i in shuffled])
    ranked = [clusters[i] for i in shuffled[np.argsort(-sizes, kind="stable")]]
    merged = [_merge_pair(a, b, prim, rng) for a, b in zip(ranked[0::2], ranked[1::2], strict=False)]
    if len(ranked) % 2:
        merged.append(ranked[-1])
    return merged


def _cluster_rg2(coords: np.ndarray, radius: np.ndarray, mass: np.ndarray) -> float:
    """Rg^2 of a cluster whose centre of mass is at the origin."""
    second = np.einsum("i,ij,ij->", mass, coords, coords) + _SPHERE_RG2_FACTOR * (mass @ radius**2)
    return float(second / mass.sum())


def _merge_pair(a: _Cluster, b: _Cluster, prim: _Primaries, rng: np.random.Generator) -> _Cluster:
    """Tunable cluster-cluster aggregation of two clusters; B (the smaller one) is moved."""
    (idx_a, pa), (idx_b, pb) = a, b
    m_a, m_b = prim.mass[idx_a], prim.mass[idx_b]
    idx = np.concatenate((idx_a, idx_b))
    gamma = _gamma(
        float(m_a.sum()),
        _cluster_rg2(pa, prim.radius[idx_a], m_a),
        float(m_b.sum()),
        _cluster_rg2(pb, prim.radius[idx_b], m_b),
        _target_rg2(float(prim.log_radius[idx].sum()), idx.size, prim.df, prim.kf),
    )
    rotation, shift = _stick_clusters(pa, prim.shrunk[idx_a], pb, prim.shrunk[idx_b], gamma, rng)
    coords = np.concatenate((pa, pb @ rotation.T + shift))
    return idx, coords - _centre_of_mass(coords, prim.mass[idx])


def _stick_clusters(
    pa: np.ndarray,
    shrunk_a: np.ndarray,
    pb: np.ndarray,
    shrunk_b: np.ndarray,
    gamma: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Rotation (3, 3) and shift (3,) placing centred cluster B in contact with centred cluster A without
    overlap, B's centre of mass at distance ``gamma`` from A's if possible (else relaxed; if ``gamma`` is NaN,
    i.e. the target is out of reach, first as close as random free contacts allow)."""
    s, t = _norms(pa), _norms(pb)
    extent_a, extent_b = s + shrunk_a, t + shrunk_b
    max_a, max_b = float(extent_a.max()), float(extent_b.max())
    compact = [(math.nan, _COMPACT_BATCHES)] if math.isnan(gamma) else []
    for g, batches in [*compact, *_gamma_schedule(gamma, 0.0, max_a + max_b)]:
        # Only primaries that can come within reach of the other cluster can touch or overlap it.
        a_near = np.flatnonzero((extent_a + max_b >= g * (1.0 - _FEASIBLE_RTOL)) | math.isnan(g))
        b_near = np.flatnonzero((extent_b + max_a >= g * (1.0 - _FEASIBLE_RTOL)) | math.isnan(g))
        pairs = None if math.isnan(g) else _feasible_pairs(s[a_near], t[b_near], shrunk_a[a_near], shrunk_b[b_near], g)
        if pairs is not None and pairs[0].size == 0:
            continue
        side_a = (pa[a_near], s[a_near], shrunk_a[a_near], _augmented(pa[a_near], shrunk_a[a_near], a_side=True))
        side_b = (pb[b_near], t[b_near], shrunk_b[b_near], _augmented(pb[b_near], shrunk_b[b_near], a_side=True))
        reach2 = (max_a + shrunk_b[b_near]) ** 2
        for _ in range(batches):
            if pairs is None:  # any pair, any contact direction and spin; keep the most compact free one
                i, j, band = (
                    rng.integers(a_near.size, size=_CANDIDATES),
                    rng.integers(b_near.size, size=_CANDIDATES),
                    None,
                )
            else:
                ii, jj, lo, hi = pairs
                pick = rng.integers(ii.size, size=_CANDIDATES)
                i, j, band = ii[pick], jj[pick], (lo[pick], hi[pick])
            rotation, shift = _sample_exposed_placements(
                tuple(x[i] for x in side_a[:3]) + (side_a[3],),
                tuple(x[j] for x in side_b[:3]) + (side_b[3],),
                band,
                None if pairs is None else g,
                rng,
            )
            if shift.shape[0] == 0:
                continue
            xb = np.einsum("kab,lb->kla", rotation, side_b[0]) + shift[:, None, :]
            clear = _clear_trials(xb, side_b[2], side_a[3], reach2, first_only=pairs is not None)
            if clear.any():
                k = int(clear.argmax()) if pairs is not None else int(np.where(clear, _norms(shift), np.inf).argmin())
                return rotation[k], shift[k]
    i, j = int(extent_a.argmax()), int(extent_b.argmax())
    return _outermost_placement(pa[i], s[i], pb[j], t[j], float(shrunk_a[i] + shrunk_b[j]), rng)


def _feasible_pairs(
    s: np.ndarray, t: np.ndarray, shrunk_a: np.ndarray, shrunk_b: np.ndarray, gamma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i in A, j in B; centre distances s, t from their centres of mass) that can touch with the
    centres of mass ``gamma`` apart -> (i, j, lowest |y|, highest |y|), y being j's centre: it must lie on the
    contact sphere around i (|s - d| .. s + d) and at t from B's centre of mass (|gamma - t| .. gamma + t)."""
    contact = shrunk_a[:, None] + shrunk_b[None, :]
    lo = np.maximum(np.abs(gamma - t)[None, :], np.abs(s[:, None] - contact))
    hi = np.minimum((gamma + t)[None, :], s[:, None] + contact)
    ii, jj = np.nonzero(lo <= hi * (1.0 + _FEASIBLE_RTOL))
    return ii, jj, lo[ii, jj], hi[ii, jj]


def _outermost_placement(
    p: np.ndarray, s: float, q: np.ndarray, t: float, d: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Rotation and shift putting B's outermost primary (centre q, |q| = t) against A's outermost one (p,
    |p| = s) on the line through both centres of mass, random spin about it. A's shrunk spheres all lie in
    the ball |x| <= s + r_i, B's in the ball of radius t + r_j around its centre at distance s + d + t; the
    balls only touch, so this placement never overlaps."""
    e = p / s if s > _TINY else _random_unit(rng)
    q_unit = q / t if t > _TINY else _random_unit(rng)
    rotation = _rotation_onto(q_unit[None, :], -e[None, :], rng.standard_normal((2, 1, 3)))[0]
    return rotation, (s + d + t) * e


def _rotation_onto(a: np.ndarray, b: np.ndarray, gauss: np.ndarray) -> np.ndarray:
    """(K, 3, 3) rotations mapping unit rows ``a`` onto unit rows ``b`` (K, 3), with a random spin about b
    (``gauss``: (2, K, 3) standard normal)."""
    ones = np.ones(a.shape[0])
    a1, b1 = _random_perpendicular(gauss[0], a, ones), _random_perpendicular(gauss[1], b, ones)
    # maps the right-handed orthonormal frame (a, a1, a x a1) onto (b, b1, b x b1)
    return (
        b[:, :, None] * a[:, None, :]
        + b1[:, :, None] * a1[:, None, :]
        + _cross_rows(b, b1)[:, :, None] * _cross_rows(a, a1)[:, None, :]
    )


def _sample_exposed_placements(
    side_a: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    side_b: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    band: tuple[np.ndarray, np.ndarray] | None,
    gamma: float | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Up to _BATCH random rigid placements (rotations (K, 3, 3), shifts (K, 3)) of centred cluster B that
    bring B's primary j (centre q, |q| = t) into contact with A's primary i (centre p, |p| = s) with B's
    centre of mass at distance ``gamma`` from A's, pre-screened so that each contact is locally exposed.

    ``side_a`` = (p, s, shrunk radius of i, :func:`_augmented` rows of A), ``side_b`` likewise for j and B,
    ``band`` = feasible range of |y|, y being j's new centre; all per candidate pair (M rows).
    j goes to y = p + d u on the contact sphere around p (|y| area-uniform in the band) and A's i sits at
    z = q + d w in B's frame (w uniform); candidates whose y touches A's or z touches B's other primaries are
    dropped. The rotation maps w onto -u; its spin about u is the one putting B's centre of mass
    c = y - R q at |c| = gamma (cosine rule, random sign); candidates with no such spin are dropped.
    With ``band`` and ``gamma`` None, u is uniform and the spin random (no constraint on |c|).
    """
    p, s, shrunk_i, a_aug = side_a
    q, t, shrunk_j, b_aug = side_b
    m = p.shape[0]
    d = shrunk_i + shrunk_j
    gauss = rng.standard_normal((2, m, 3))
    uniform = rng.random((2, m))
    if band is None:
        cos_t = 2.0 * uniform[0] - 1.0
    else:
        lo, hi = band
        hi = np.maximum(hi, lo)
        cos_t = _cos_for_distance(lo * lo + uniform[0] * (hi * hi - lo * lo), s, d)
    y = _points_on_spheres(p, s, d, cos_t, gauss[0])
    u = (y - p) / d[:, None]
    w = gauss[1] / _norms(gauss[1])[:, None]
    alpha = np.einsum("ij,ij->i", q, w)  # q = alpha w + beta e_q
    beta = np.sqrt(np.maximum(t * t - alpha * alpha, 0.0))
    g = y + alpha[:, None] * u  # c = g - beta e_t with e_t a unit vector perpendicular to u
    g_u = np.einsum("ij,ij->i", g, u)
    g2 = np.einsum("ij,ij->i", g, g)
    g_perp = np.sqrt(np.maximum(g2 - g_u * g_u, 0.0))
    if gamma is None:
        cos_psi = np.cos(2.0 * np.pi * uniform[1])
    else:
        cos_psi = (g2 + beta * beta - gamma * gamma) / np.maximum(2.0 * beta * g_perp, _TINY)
    # (near-)degenerate frames are skipped so that the rotations below stay orthonormal to rounding
    ok = (beta > _DEGENERATE * t) & (g_perp > _DEGENERATE * np.sqrt(g2)) & (np.abs(cos_psi) <= 1.0)
    ok &= (_augmented(y, shrunk_j, a_side=False) @ a_aug.T).min(axis=1) >= 0.0
    ok &= (_augmented(q + d[:, None] * w, shrunk_i, a_side=False) @ b_aug.T).min(axis=1) >= 0.0
    sel = np.flatnonzero(ok)[:_BATCH]

    u, w, q, alpha, beta, g, cos_psi = (x[sel] for x in (u, w, q, alpha, beta, g, cos_psi))
    sin_psi = np.sqrt(1.0 - cos_psi * cos_psi) * np.where(rng.random(sel.size) < 0.5, -1.0, 1.0)
    f1 = g - np.einsum("ij,ij->i", g, u)[:, None] * u
    f1 /= _norms(f1)[:, None]
    e_t = cos_psi[:, None] * f1 + sin_psi[:, None] * _cross_rows(u, f1)
    e_q = q - alpha[:, None] * w
    e_q /= _norms(e_q)[:, None]
    # R maps the right-handed orthonormal frame (w, e_q, w x e_q) onto (-u, e_t, -u x e_t).
    rotation = (
        -u[:, :, None] * w[:, None, :]
        + e_t[:, :, None] * e_q[:, None, :]
        + _cross_rows(-u, e_t)[:, :, None] * _cross_rows(w, e_q)[:, None, :]
    )
    shift = g - beta[:, None] * e_t
    return rotation, shift


def _augmented(centres: np.ndarray, shrunk: np.ndarray, *, a_side: bool) -> np.ndarray:
    """(n, 6) rows such that ``x_row @ p_row`` (one row of each side) equals
    |x - p|^2 - (r_x + r_p)^2 + _ROUNDING_SLACK (|x|^2 + |p|^2): negative iff the shrunk spheres overlap."""
    out = np.empty((shrunk.size, 6))
    norm2 = (1.0 + _ROUNDING_SLACK) * np.einsum("ij,ij->i", centres, centres) - shrunk * shrunk
    if a_side:
        np.multiply(centres, -2.0, out=out[:, :3])
        np.multiply(shrunk, -2.0, out=out[:, 3])
        out[:, 4] = 1.0
        out[:, 5] = norm2
    else:
        out[:, :3] = centres
        out[:, 3] = shrunk
        out[:, 4] = norm2
        out[:, 5] = 1.0
    return out


def _clear_trials(
    xb: np.ndarray, shrunk_b: np.ndarray, a_aug: np.ndarray, reach2: np.ndarray, *, first_only: bool
) -> np.ndarray:
    """(K,) bool: which trials' B centres ``xb`` (K, nB, 3) (shrunk radii ``shrunk_b``) overlap none of A's
    primaries (``a_aug``: :func:`_augmented` rows). B primaries whose squared distance from the origin is
    >= ``reach2`` (nB,) cannot reach A and are skipped. Trials are tested in chunks of bounded memory; with
    ``first_only`` testing stops after the first chunk that has a clear trial (later ones stay False)."""
    n_trials, n_b = xb.shape[:2]
    chunk = max(1, min(n_trials, _PAIR_BUDGET // max(1, n_b * a_aug.shape[0])))
    r2 = np.einsum("klc,klc->kl", xb, xb)
    clear = np.zeros(n_trials, dtype=bool)
    for start in range(0, n_trials, chunk):
        stop = min(start + chunk, n_trials)
        kk, ll = np.nonzero(r2[start:stop] < reach2[None, :])
        bad = np.zeros(stop - start, dtype=bool)
        if kk.size:
            excess = _augmented(xb[kk + start, ll], shrunk_b[ll], a_side=False) @ a_aug.T
            bad[kk[excess.min(axis=1) < 0.0]] = True
        clear[start:stop] = ~bad
        if first_only and clear.any():
            break
    return clear
