"""The training images' distribution in influence-factor space: a Gaussian copula with kernel-smoothed marginals.

    per-image factors (eval.factors, physical units)
        -> transform (log for positive factors, logit for fractions)
        -> marginals: 1-D Gaussian KDE per factor (CDF and density in closed form)
        -> normal scores z = Phi^-1(F(x)), their correlation R (shrunk towards I for tens of images)
        -> log density and sampling (z ~ N(0, R) -> x = F^-1(Phi(z)))
    typicality of a new image: Hotelling's T^2 prediction p-value on the transformed factors (exact for a
    normal model with estimated mean and covariance: calibrated with tens of images, where a KDE's tails are not)

Tens of images cannot support a flexible joint model; the copula keeps the marginals non-parametric and the
dependence to one correlation matrix (Nalisnick et al. 2019: density models on raw pixels fail for
out-of-distribution detection, hence physical factors). Factors that are constant over the training images (one
instrument setting, e.g. the pixel size) are kept apart as fixed values, checked with a relative tolerance.
A query image may lack some factors (no labels: no crowding or sizes): the copula is marginalised to the ones it
has (the sub-matrix of R).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

# factor -> transform to an unbounded axis
TRANSFORMS: dict[str, str] = {
    "pixel_size_nm": "log",
    "blur_sigma_nm": "log",
    "equivalent_counts": "log",
    "snr": "log",
    "substrate_level": "logit",
    "contrast": "logit",
    "coverage": "logit",
    "touching_fraction": "logit",
    "particles_per_aggregate": "log",
    "d50_nm": "log",
}
# snr (particle contrast / noise) stands for the dose: equivalent counts move with the brightness offset too (two
# of the reference images have a brighter substrate and 3-5x the counts of the rest at the same SNR)
DEFAULT_FACTORS = ("pixel_size_nm", "blur_sigma_nm", "snr", "coverage", "touching_fraction", "particles_per_aggregate",
                   "d50_nm")
BLUR_FLOOR_PX = 0.3  # blur_sigma_nm below 0.3 px is unresolved (eval.factors): estimates are floored there
FIXED_REL_TOL = 0.05  # a factor constant in training: a query within 5 % of it is inside
_EPS = 1e-4


def forward(name: str, values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, float)
    if TRANSFORMS[name] == "log":
        return np.log(np.maximum(v, _EPS))
    p = np.clip(v, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def inverse(name: str, values: np.ndarray) -> np.ndarray:
    y = np.asarray(values, float)
    return np.exp(y) if TRANSFORMS[name] == "log" else 1.0 / (1.0 + np.exp(-y))


@dataclass(frozen=True, slots=True, eq=False)
class DomainModel:
    """Gaussian copula over the transformed factors ``names``; ``train`` holds the training images' transformed
    values (rows = images), ``bandwidth`` the marginal KDEs' bandwidths, ``corr`` the normal scores' correlation.
    ``fixed`` maps factors constant over the training images to their value."""

    names: tuple[str, ...]
    train: np.ndarray  # (n, k) transformed
    bandwidth: np.ndarray  # (k,)
    corr: np.ndarray  # (k, k)
    fixed: Mapping[str, float] = field(default_factory=dict)
    images: tuple[str, ...] = ()
    shrinkage: float = 0.0

    @property
    def n(self) -> int:
        return len(self.train)

    def as_dict(self) -> dict:
        return {"kind": "gaussian-copula", "names": list(self.names), "train": self.train.tolist(),
                "bandwidth": self.bandwidth.tolist(), "corr": self.corr.tolist(), "fixed": dict(self.fixed),
                "images": list(self.images), "shrinkage": self.shrinkage,
                "transforms": {k: TRANSFORMS[k] for k in self.names}}

    @staticmethod
    def from_dict(blob: Mapping) -> DomainModel:
        if blob.get("kind") != "gaussian-copula":
            raise ValueError(f"unknown domain model kind {blob.get('kind')!r} (expected 'gaussian-copula')")
        names = tuple(blob["names"])
        unknown = [n for n in names if n not in TRANSFORMS]
        if unknown:
            raise ValueError(f"unknown factors {unknown} (expected some of {sorted(TRANSFORMS)})")
        train = np.asarray(blob["train"], float).reshape(-1, len(names))
        corr = np.asarray(blob["corr"], float)
        if corr.shape != (len(names), len(names)):
            raise ValueError(f"corr has shape {corr.shape}, expected {(len(names), len(names))}")
        return DomainModel(names, train, np.asarray(blob["bandwidth"], float), corr,
                           {k: float(v) for k, v in blob.get("fixed", {}).items()}, tuple(blob.get("images", ())),
                           float(blob.get("shrinkage", 0.0)))


def factor_value(row: Mapping[str, float], name: str) -> float:
    v = row.get(name)
    v = np.nan if v is None else float(v)
    if name == "blur_sigma_nm" and np.isfinite(v) and row.get("pixel_size_nm"):
        v = max(v, BLUR_FLOOR_PX * float(row["pixel_size_nm"]))  # 0 = unresolved, not "no blur"
    return v


def factor_matrix(rows: Sequence[Mapping[str, float]], names: Sequence[str]) -> np.ndarray:
    """(n, k) raw factor values of ``rows`` (NaN where missing; blur floored at its resolution limit)."""
    return np.array([[factor_value(r, n) for n in names] for r in rows], float).reshape(len(rows), len(names))


def fit_domain(rows: Sequence[Mapping[str, float]], names: Sequence[str] = DEFAULT_FACTORS, *,
               images: Sequence[str] = (), shrinkage: float | None = None) -> DomainModel:
    """Fit the copula to per-image factor rows (dicts as ``eval.factors`` writes them).

    A factor is used when every training image has it; one that varies by less than 0.1 % is fixed. The
    marginal bandwidths follow Silverman's rule; the correlation of the normal scores is shrunk towards the
    identity by ``shrinkage`` (default k / n, capped at 0.5: few images, weak evidence for dependence).
    """
    if len(rows) < 5:
        raise ValueError(f"{len(rows)} training images (expected at least 5 for a density in factor space)")
    raw = factor_matrix(rows, names)
    keep, fixed = [], {}
    for j, name in enumerate(names):
        col = raw[:, j]
        if not np.all(np.isfinite(col)):
            continue
        med = float(np.median(col))
        if np.ptp(col) <= 1e-3 * max(abs(med), 1e-12):
            fixed[name] = med
        else:
            keep.append(j)
    if not keep:
        raise ValueError(f"no factor varies over the training images (fixed: {sorted(fixed)})")
    used = tuple(names[j] for j in keep)
    train = np.column_stack([forward(n, raw[:, j]) for n, j in zip(used, keep, strict=True)])
    n, k = train.shape
    sd = train.std(axis=0, ddof=1)
    iqr = np.subtract(*np.percentile(train, [75, 25], axis=0))
    spread = np.minimum(sd, np.where(iqr > 0, iqr / 1.349, sd))
    bandwidth = 0.9 * np.maximum(spread, 1e-6) * n ** (-0.2)  # Silverman
    lam = min(k / n, 0.5) if shrinkage is None else float(shrinkage)
    model = DomainModel(used, train, bandwidth, np.eye(k), fixed, tuple(images), lam)
    z = _scores(model, train)
    corr = np.corrcoef(z, rowvar=False) if k > 1 else np.ones((1, 1))
    corr = (1 - lam) * np.atleast_2d(corr) + lam * np.eye(k)
    return DomainModel(used, train, bandwidth, corr, fixed, tuple(images), lam)


def _cdf(model: DomainModel, y: np.ndarray) -> np.ndarray:
    """Marginal KDE CDFs at transformed values y (m, k)."""
    u = (y[:, None, :] - model.train[None, :, :]) / model.bandwidth
    return stats.norm.cdf(u).mean(axis=1)


def _log_pdf(model: DomainModel, y: np.ndarray) -> np.ndarray:
    u = (y[:, None, :] - model.train[None, :, :]) / model.bandwidth
    return np.log(np.maximum(stats.norm.pdf(u).mean(axis=1) / model.bandwidth, 1e-300))


def _scores(model: DomainModel, y: np.ndarray) -> np.ndarray:
    return stats.norm.ppf(np.clip(_cdf(model, y), 1e-12, 1 - 1e-12))


@dataclass(frozen=True, slots=True)
class Typicality:
    """How typical one image is of the training images, on the factors it has."""

    p_value: float  # prediction p-value (Hotelling T^2 of a new draw): small = unlike the training images
    distance2: float
    factors_used: tuple[str, ...]
    scores: dict[str, float]  # normal score per factor (|z| > 3: beyond the training images' range)
    log_density: float  # log of the copula density (transformed units)
    fixed_outside: dict[str, float]  # fixed factors the query differs from by more than FIXED_REL_TOL: its value


def typicality(model: DomainModel, row: Mapping[str, float]) -> Typicality:
    """Typicality of one factor row (raw units), marginalising the factors it lacks."""
    raw = factor_matrix([row], model.names)[0]
    have = np.isfinite(raw)
    fixed_out = {}
    for name, value in model.fixed.items():
        v = factor_value(row, name)
        if np.isfinite(v) and abs(v - value) > FIXED_REL_TOL * abs(value):
            fixed_out[name] = v
    used = tuple(n for n, h in zip(model.names, have, strict=True) if h)
    if not used:
        return Typicality(float("nan"), float("nan"), (), {}, float("nan"), fixed_out)
    y = np.array([[forward(n, raw[j]) for j, n in enumerate(model.names)]])
    y_filled = np.where(np.isfinite(y), y, np.median(model.train, axis=0))
    z = _scores(model, y_filled)[0]
    logf = _log_pdf(model, y_filled)[0]
    idx = np.flatnonzero(have)
    sub = model.corr[np.ix_(idx, idx)]
    zs = z[idx]
    _, logdet = np.linalg.slogdet(sub)
    log_c = -0.5 * logdet - 0.5 * float(zs @ (np.linalg.solve(sub, zs) - zs))
    d2, p = prediction_p_value(model.train[:, idx], y[0, idx], model.shrinkage)
    return Typicality(p, d2, used,
                      {n: float(z[j]) for j, n in enumerate(model.names) if have[j]},
                      float(log_c + logf[idx].sum()), fixed_out)


def prediction_p_value(train: np.ndarray, y: np.ndarray, shrinkage: float = 0.0) -> tuple[float, float]:
    """(T^2, p) of a new point y against n training points (rows of ``train``, transformed units): under a
    normal model with unknown mean and covariance, n / (n + 1) (y - mean)' S^-1 (y - mean) (n - k) / (k (n - 1))
    follows F(k, n - k) (Hotelling's prediction region), so p stays calibrated with tens of images. S is shrunk
    towards its diagonal by ``shrinkage``; with n <= k + 1 the factors are taken as independent (S diagonal,
    F(k, n - 1) on the summed squares' mean)."""
    n, k = train.shape
    mean = train.mean(axis=0)
    cov = np.atleast_2d(np.cov(train, rowvar=False))
    cov = (1 - shrinkage) * cov + shrinkage * np.diag(np.diag(cov))
    diff = y - mean
    if n <= k + 1:
        t2 = float(np.sum(diff**2 / np.diag(cov))) * n / (n + 1)
        return t2, float(stats.f.sf(t2 / k, k, max(n - 1, 1)))
    t2 = float(diff @ np.linalg.solve(cov, diff)) * n / (n + 1)
    f = t2 * (n - k) / (k * (n - 1))
    return t2, float(stats.f.sf(f, k, n - k))


def bootstrap_p_values(rows: Sequence[Mapping[str, float]], query: Mapping[str, float], *, names=DEFAULT_FACTORS,
                       n_boot: int = 200, rng: np.random.Generator | int | None = 0) -> np.ndarray:
    """The query's typicality p-value under models refitted to bootstrap resamples of the training images
    (by image): its spread is the uncertainty of the training distribution itself."""
    rng = np.random.default_rng(rng)
    out = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(rows), len(rows))
        try:
            model = fit_domain([rows[i] for i in pick], names)
        except ValueError:
            continue  # a resample where nothing varies
        out.append(typicality(model, query).p_value)
    return np.asarray(out, float)


def sample(model: DomainModel, n: int, rng: np.random.Generator | int | None = 0, *,
           shift: Mapping[str, float] | None = None) -> list[dict[str, float]]:
    """``n`` factor rows (raw units) drawn from the copula: z ~ N(0, R), each marginal's KDE sampled by
    inverse CDF through a draw of a training point plus kernel noise matched to the same uniform. ``shift``
    multiplies factors after drawing (a shifted test set); fixed factors are copied."""
    rng = np.random.default_rng(rng)
    k = len(model.names)
    z = rng.multivariate_normal(np.zeros(k), model.corr, size=n)
    u = stats.norm.cdf(z)
    y = np.empty((n, k))
    grid_lo = model.train.min(axis=0) - 6 * model.bandwidth
    grid_hi = model.train.max(axis=0) + 6 * model.bandwidth
    for j in range(k):
        grid = np.linspace(grid_lo[j], grid_hi[j], 2048)
        sub = DomainModel(model.names[j:j + 1], model.train[:, j:j + 1], model.bandwidth[j:j + 1], np.eye(1))
        cdf = _cdf(sub, grid[:, None])[:, 0]
        y[:, j] = np.interp(u[:, j], cdf, grid)
    rows = []
    for i in range(n):
        row = {name: float(inverse(name, y[i, j])) for j, name in enumerate(model.names)}
        row.update(model.fixed)
        for name, factor in (shift or {}).items():
            if name in row:
                row[name] *= float(factor)
        rows.append(row)
    return rows
