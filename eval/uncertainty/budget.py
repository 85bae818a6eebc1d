"""Variance components of a model's measurement (a GUM-style budget), from tables of repeated measurements.

The measurand y is one number a trained model reports on the test set (e.g. D50 in nm). One measurement is
taken with one training set, one training seed, one noise realisation of the test images and one test set:

    y = mu + a + b + c + d
        a ~ N(0, s_train^2)  training-set sampling (another training set from the same distribution)
        b ~ N(0, s_seed^2)   retraining (same data, another seed): repeatability
        c ~ N(0, s_noise^2)  input noise (same test images, detector noise re-drawn)
        d ~ N(0, s_test^2)   test-set sampling (another test set: bootstrap over test images)

all independent and additive (no interactions; an interaction of model and noise realisation, if present, is
counted where the design measures it, see below). The combined standard uncertainty of one measurement is

    u_c = sqrt(s_train^2 + s_seed^2 + s_noise^2 + s_test^2)        (root sum of squares, GUM 5.1.2)
    U   = k u_c, k = 2

Supported design (balanced training draws x seeds, seeds nested in draws; the other two sources measured per
model). The split design of the issue is in ``training_components_split``.

1. Training table y[i, j], i = 1..a training-set draws (bootstrap resamples of the training images or fresh
   simulated training sets), j = 1..r seeds (r >= 2), every model evaluated on the same test images with the
   same noise realisation (so c and d are constant in this table and fall into the mean). Every run has its
   own seed (nested in the draw, spawned from a SeedSequence): reusing seed j across draws would add a seed main
   effect that cancels from MSB and biases s_train^2 low. One-way random effects ANOVA, method of moments:

       MSW = sum_ij (y_ij - ybar_i)^2 / (a (r - 1))       E[MSW] = s_seed^2              df_W = a (r - 1)
       MSB = r sum_i (ybar_i - ybar)^2 / (a - 1)          E[MSB] = s_seed^2 + r s_train^2  df_B = a - 1
       s_seed^2  = MSW
       s_train^2 = max(0, (MSB - MSW) / r)                (truncated at 0; the raw value is kept too)

   s_seed^2: exact chi-square interval [df MSW / chi2_{0.975, df}, df MSW / chi2_{0.025, df}].
   s_train^2 is a difference of mean squares: no exact interval exists. We use the modified large-sample
   (MLS) interval of Graybill & Wang as given by Burdick & Graybill (1992, "Confidence intervals on variance
   components", sec. 3.3, eq. 3.8-3.9), bounds truncated at 0. It keeps its coverage near nominal when s_train
   is small against s_seed, where the Satterthwaite chi-square interval is liberal. Its degrees of freedom
   (for the Welch-Satterthwaite combination only) are Satterthwaite's:
       df = (MSB - MSW)^2 / (MSB^2 / df_B + MSW^2 / df_W)

2. Input-noise table y[m, k]: m = 1..M models, k = 1..n >= 2 noise re-draws of the same test images.
3. Test-sampling table y[m, b]: m = 1..M models, b = 1..B >= 2 bootstrap resamples of the test images.
   Both: pooled within-model variance  s^2 = sum_mk (y_mk - ybar_m)^2 / (M (n - 1)), exact chi-square interval
   with df = M (n - 1) under the Gaussian model.

   Caveat for the test-sampling table: bootstrap replicates are independent given the test set, so the
   chi-square interval covers the bootstrap variance *of this test set* (the Monte Carlo error of B resamples),
   not the error of the bootstrap as an estimate of the population's test-set variance, which needs more test
   images, not more resamples. Pooling over models adds no information about the test set itself.

Combined: u_c as above; effective degrees of freedom by Welch-Satterthwaite (GUM G.4.2)
    nu_eff = u_c^4 / sum_i (u_i^4 / nu_i)
reported so that a reader can replace k = 2 by t_{0.975, nu_eff} when nu_eff is small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
COVERAGE_FACTOR = 2.0

TRAIN = "training_set"
SEED = "retraining"
NOISE = "input_noise"
TEST = "test_sampling"


@dataclass(frozen=True, slots=True, kw_only=True)
class Component:
    """One variance component: its standard uncertainty u (same unit as the measurand) with a 95 % interval.

    variance_raw : the method-of-moments estimate before truncation at 0 (may be negative).
    df           : degrees of freedom (exact for chi-square components, Satterthwaite's for the training one).
    method       : how the interval was made ("chi-square" or "MLS (Graybill-Wang)").
    """

    name: str
    u: float
    u_low: float
    u_high: float
    variance: float
    variance_low: float
    variance_high: float
    variance_raw: float
    df: float
    method: str

    def as_dict(self) -> dict[str, float | str]:
        return {f: getattr(self, f) for f in self.__slots__}


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    """The budget of one measurand: mean, components, combined u_c, expanded U = k u_c, Welch-Satterthwaite df."""

    measurand: str
    mean: float
    components: tuple[Component, ...]
    u_c: float
    k: float
    U: float
    df_eff: float

    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(f"no component {name!r} (have {[c.name for c in self.components]})")

    def as_dict(self) -> dict:
        return {
            "measurand": self.measurand,
            "mean": self.mean,
            "u_c": self.u_c,
            "k": self.k,
            "U": self.U,
            "df_eff": self.df_eff,
            "components": [c.as_dict() for c in self.components],
        }


# ------------------------------------------------------------------------------------ input checks


def as_table(values: Sequence[Sequence[float]] | np.ndarray, *, name: str, rows: str, cols: str,
             min_rows: int, min_cols: int) -> np.ndarray:
    """A rectangular, finite float table, or a ValueError naming what is wrong and what was expected."""
    if isinstance(values, np.ndarray):
        table = values
    else:
        lengths = [len(row) for row in values]
        if len(set(lengths)) > 1:
            raise ValueError(
                f"{name}: ragged table, {rows} have {lengths} {cols} (expected the same number of {cols} in every"
                " row: a balanced design)"
            )
        table = np.asarray(values)
    table = np.asarray(table, dtype=float)
    if table.ndim != 2:
        raise ValueError(f"{name}: got an array of shape {table.shape} (expected 2-D: {rows} x {cols})")
    if table.shape[0] < min_rows:
        raise ValueError(f"{name}: {table.shape[0]} {rows} (expected at least {min_rows})")
    if table.shape[1] < min_cols:
        raise ValueError(f"{name}: {table.shape[1]} {cols} per row (expected at least {min_cols})")
    bad = ~np.isfinite(table)
    if bad.any():
        where = [tuple(int(i) for i in ix) for ix in np.argwhere(bad)[:5]]
        raise ValueError(
            f"{name}: {int(bad.sum())} non-finite value(s) at (row, col) {where} (expected finite numbers)"
        )
    return table


# ------------------------------------------------------------------------------------ estimators


def _chi2_interval(variance: float, df: float) -> tuple[float, float]:
    alpha = 1.0 - CONFIDENCE
    return (df * variance / stats.chi2.ppf(1 - alpha / 2, df), df * variance / stats.chi2.ppf(alpha / 2, df))


def _component(name: str, variance_raw: float, low: float, high: float, df: float, method: str) -> Component:
    variance_raw, low, high = float(variance_raw), float(low), float(high)  # plain floats: JSON-able
    variance = max(0.0, variance_raw)
    low, high = max(0.0, low), max(0.0, high)
    return Component(
        name=name,
        u=math.sqrt(variance),
        u_low=math.sqrt(low),
        u_high=math.sqrt(high),
        variance=variance,
        variance_low=low,
        variance_high=high,
        variance_raw=variance_raw,
        df=df,
        method=method,
    )


def pooled_within(table: Sequence[Sequence[float]] | np.ndarray, *, name: str) -> Component:
    """Pooled within-row variance of a (models x repeats) table, with its exact chi-square interval.

    table : (M, n) measurements, M >= 1 models, n >= 2 repeats each (noise re-draws or test bootstraps).
    """
    y = as_table(table, name=name, rows="models", cols="repeats", min_rows=1, min_cols=2)
    m, n = y.shape
    df = m * (n - 1)
    variance = float(((y - y.mean(axis=1, keepdims=True)) ** 2).sum() / df)
    low, high = _chi2_interval(variance, df)
    return _component(name, variance, low, high, float(df), "chi-square")


def mls_difference_interval(ms1: float, df1: float, ms2: float, df2: float) -> tuple[float, float]:
    """Modified large-sample interval on theta1 - theta2 from mean squares ms_i ~ theta_i chi2_{df_i} / df_i.

    Burdick & Graybill (1992), eq. 3.8-3.9; 95 % two-sided; bounds not yet truncated at 0.
    """
    alpha = 1.0 - CONFIDENCE
    up, lo = 1 - alpha / 2, alpha / 2
    g1 = 1 - df1 / stats.chi2.ppf(up, df1)
    h1 = df1 / stats.chi2.ppf(lo, df1) - 1
    g2 = 1 - df2 / stats.chi2.ppf(up, df2)
    h2 = df2 / stats.chi2.ppf(lo, df2) - 1
    f_up = stats.f.ppf(up, df1, df2)
    f_lo = stats.f.ppf(lo, df1, df2)
    g12 = ((f_up - 1) ** 2 - g1**2 * f_up**2 - h2**2) / f_up
    h12 = ((1 - f_lo) ** 2 - h1**2 * f_lo**2 - g2**2) / f_lo
    v_low = g1**2 * ms1**2 + h2**2 * ms2**2 + g12 * ms1 * ms2
    v_high = h1**2 * ms1**2 + g2**2 * ms2**2 + h12 * ms1 * ms2
    diff = ms1 - ms2
    return diff - math.sqrt(max(v_low, 0.0)), diff + math.sqrt(max(v_high, 0.0))


def training_components(table: Sequence[Sequence[float]] | np.ndarray) -> tuple[Component, Component]:
    """Training-set sampling and retraining components from a (draws x seeds) table (one-way random effects).

    table : (a, r) measurements; row i = one training-set draw, column j = one seed; a >= 2, r >= 2.
    Returns (training-set component, retraining component); see the module docstring for the model.
    """
    y = as_table(table, name="training table", rows="training-set draws", cols="seeds", min_rows=2, min_cols=2)
    a, r = y.shape
    row_means = y.mean(axis=1)
    df_b, df_w = a - 1, a * (r - 1)
    msb = float(r * ((row_means - row_means.mean()) ** 2).sum() / df_b)
    msw = float(((y - row_means[:, None]) ** 2).sum() / df_w)

    low_w, high_w = _chi2_interval(msw, df_w)
    seed = _component(SEED, msw, low_w, high_w, float(df_w), "chi-square")

    low_b, high_b = mls_difference_interval(msb, df_b, msw, df_w)
    diff = msb - msw
    df_train = diff**2 / (msb**2 / df_b + msw**2 / df_w) if diff > 0 else 0.0
    train = _component(TRAIN, diff / r, low_b / r, high_b / r, float(df_train), "MLS (Graybill-Wang)")
    return train, seed


def training_components_split(
    draws: Sequence[float] | np.ndarray, seeds: Sequence[float] | np.ndarray
) -> tuple[Component, Component]:
    """Training-set and retraining components from the split design (the issue's two separate runs of K models).

    draws : (K1,) one model per training-set draw, each with its own seed: Var = s_train^2 + s_seed^2.
    seeds : (K2,) models on one training set, different seeds:             Var = s_seed^2.
    s_seed^2 = S2^2 (chi-square, K2 - 1 df); s_train^2 = max(0, S1^2 - S2^2), MLS interval, Satterthwaite df.
    Less efficient than the crossed table for the same number of models (the seed variance is learned from one
    training set only), but it is what "K models per source" gives.
    """
    d = as_table(np.asarray(draws, dtype=float).reshape(1, -1) if np.ndim(draws) == 1 else draws,
                 name="training-set draws", rows="tables", cols="models", min_rows=1, min_cols=2)
    e = as_table(np.asarray(seeds, dtype=float).reshape(1, -1) if np.ndim(seeds) == 1 else seeds,
                 name="retraining seeds", rows="tables", cols="models", min_rows=1, min_cols=2)
    if d.shape[0] != 1 or e.shape[0] != 1:
        raise ValueError(f"split design: expected two 1-D arrays, got shapes {d.shape} and {e.shape}")
    df1, df2 = d.shape[1] - 1, e.shape[1] - 1
    s1, s2 = float(d.var(ddof=1)), float(e.var(ddof=1))
    seed = _component(SEED, s2, *_chi2_interval(s2, df2), float(df2), "chi-square")
    low, high = mls_difference_interval(s1, df1, s2, df2)
    diff = s1 - s2
    df_train = diff**2 / (s1**2 / df1 + s2**2 / df2) if diff > 0 else 0.0
    return _component(TRAIN, diff, low, high, float(df_train), "MLS (Graybill-Wang)"), seed


def combine(components: Sequence[Component], *, measurand: str, mean: float, k: float = COVERAGE_FACTOR) -> Budget:
    """Root sum of squares of the components (GUM), U = k u_c, Welch-Satterthwaite effective degrees of freedom."""
    variance = sum(c.variance for c in components)
    u_c = math.sqrt(variance)
    denom = sum(c.variance**2 / c.df for c in components if c.variance > 0 and c.df > 0)
    df_eff = variance**2 / denom if denom > 0 else math.inf
    return Budget(measurand=measurand, mean=mean, components=tuple(components), u_c=u_c, k=k, U=k * u_c,
                  df_eff=df_eff)


def uncertainty_budget(
    training: Sequence[Sequence[float]] | np.ndarray,
    noise: Sequence[Sequence[float]] | np.ndarray,
    test: Sequence[Sequence[float]] | np.ndarray,
    *,
    measurand: str = "D50_nm",
) -> Budget:
    """The full budget of one measurand from its three tables (see the module docstring for the design).

    training : (a, r) training-set draws x seeds, all on the nominal test set; its grand mean is the reported mean.
    noise    : (M, n) models x noise re-draws of the test images.
    test     : (M', B) models x bootstrap resamples of the test images (by image: ``bootstrap_image_indices``).
    """
    train, seed = training_components(training)
    mean = float(np.mean(as_table(training, name="training table", rows="training-set draws", cols="seeds",
                                  min_rows=2, min_cols=2)))
    components = (train, seed, pooled_within(noise, name=NOISE), pooled_within(test, name=TEST))
    return combine(components, measurand=measurand, mean=mean)


# ------------------------------------------------------------------------------------ resampling and reading


def bootstrap_image_indices(n_images: int, n_resamples: int, rng: int | np.random.Generator | None) -> np.ndarray:
    """Bootstrap resamples of a test set, by image: (n_resamples, n_images) int64 image indices in [0, n_images),
    each row sorted (a resample is the dataset made of the drawn images, in their original order).

    Particles are never resampled on their own: they are correlated within an image (same field, same
    segmentation failures), so a particle bootstrap would understate the test-sampling variance. Use
    ``particles_of_images`` to turn a resample into particle indices.
    """
    if int(n_images) < 1 or int(n_images) != n_images:
        raise ValueError(f"n_images must be an integer >= 1, got {n_images!r}")
    if int(n_resamples) < 1 or int(n_resamples) != n_resamples:
        raise ValueError(f"n_resamples must be an integer >= 1, got {n_resamples!r}")
    rng = np.random.default_rng(rng)
    return np.sort(rng.integers(0, int(n_images), size=(int(n_resamples), int(n_images))), axis=1)


def particles_of_images(particle_image: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Indices of the particles of a resample of images: every particle of each drawn image, once per draw.

    particle_image : (P,) int, the image index of each particle.
    images         : (n,) int, drawn image indices (one row of ``bootstrap_image_indices``).
    """
    particle_image = np.asarray(particle_image)
    order = np.argsort(particle_image, kind="stable")
    starts = np.searchsorted(particle_image[order], images, side="left")
    ends = np.searchsorted(particle_image[order], images, side="right")
    if len(images) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([order[s:e] for s, e in zip(starts, ends, strict=True)]).astype(np.int64)


def images_needed_for(component: Component, n_train: int, target_u: float) -> int:
    """Training images needed to bring a sampling component down to ``target_u``, if its variance scales as 1/n:
    n = n_train (u / target_u)^2, rounded up. Only the training-set component scales so."""
    if component.name != TRAIN:
        raise ValueError(f"the 1/n scaling applies to the {TRAIN!r} component, got {component.name!r}")
    if int(n_train) < 1:
        raise ValueError(f"n_train must be >= 1, got {n_train!r}")
    if not target_u > 0:
        raise ValueError(f"target_u must be > 0, got {target_u!r}")
    return math.ceil(n_train * (component.u / target_u) ** 2 - 1e-9)


def images_needed_to_halve(component: Component, n_train: int) -> int:
    """Training images that halve the training-set sampling component u under the 1/n scaling of its variance:
    4 n_train (halving u quarters the variance). The answer does not depend on u, only on the scaling, which is
    an assumption: check it by measuring the component at two training-set sizes. A component estimated as 0 has
    nothing to halve (ValueError)."""
    if component.u == 0:
        raise ValueError(f"{component.name}: u is 0 (truncated estimate), nothing to halve; expected u > 0")
    return images_needed_for(component, n_train, component.u / 2)
