"""Operating ranges, robustness statistics, sensitivity indices and their figures, on synthesised rows."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from scipy import stats
from scipy.stats import qmc

from eval.jsonable import to_jsonable
from eval.report.plots import (
    curves_figure,
    data_uri,
    marginal_pass_figure,
    pass_map_figure,
    pass_probability_figure,
    psd_figure,
    sensitivity_figure,
)
from eval.robustness.binomial import clopper_pearson, images_needed, mean_interval, pass_count
from eval.robustness.designs import design_indices, given_data_indices, morris_design, saltelli_design
from eval.robustness.ranges import marginal_passes, operating_range, operating_ranges, pass_map, pass_maps
from eval.robustness.rows import RangeCriterion, ResultRow, as_rows, factor_unit, with_metric
from eval.robustness.tables import binned_metric_curves, metric_curves, robustness_table

BLUR = "probe.sigma_nm"
DOSE = "detector.probe_current_pA"
CRIT = RangeCriterion(measurand="D50_rel_err", tau=0.05, alpha=0.05, confidence=0.95)


def oat_rows(n_per_level: int, fail_rate, *, blur_levels=range(1, 11), nominal_blur=2.0,
             seed: int = 0) -> list[ResultRow]:
    """A one-at-a-time sweep of blur (and two dose levels) whose images fail at a known rate per level.

    Exactly round(fail_rate(blur) * n) images of a level have |error| > tau (0.1-0.3), the others |error| <=
    0.04; dose has no effect. Point 0 is the nominal point, as in simulator.sweep.
    """
    rng = np.random.default_rng(seed)
    nominal = {BLUR: nominal_blur, DOSE: 100.0}
    points = [dict(nominal)]
    points += [{**nominal, BLUR: float(b)} for b in blur_levels if float(b) != nominal_blur]
    points += [{**nominal, DOSE: d} for d in (30.0, 300.0)]
    rows = []
    for pid, factors in enumerate(points):
        n_fail = round(fail_rate(factors[BLUR]) * n_per_level)
        fail = rng.permutation(np.arange(n_per_level) < n_fail)
        err = np.where(fail, rng.uniform(0.1, 0.3, n_per_level) * rng.choice([-1, 1], n_per_level),
                       rng.uniform(-0.04, 0.04, n_per_level))
        rows += [ResultRow(pid, r, factors, {"D50_rel_err": float(e), "score": 1 - abs(float(e))})
                 for r, e in enumerate(err)]
    return rows


def threshold_at_5(blur: float) -> float:
    return 0.0 if blur < 5 else 0.5


# ----------------------------------------------------------------------------------------------- binomial


def test_clopper_pearson_known_values():
    low, high = clopper_pearson(0, 10)
    assert low == 0.0 and high == pytest.approx(0.3085, abs=1e-4)
    for n in (1, 5, 10, 72, 500):
        low, high = clopper_pearson(n, n, 0.95)
        assert high == 1.0 and low == pytest.approx(0.025 ** (1 / n), rel=1e-10)
    # against scipy's exact binomial interval and the k <-> n - k symmetry
    for k, n in [(3, 10), (17, 40), (1, 2), (99, 100)]:
        ref = stats.binomtest(k, n).proportion_ci(0.9, method="exact")
        assert clopper_pearson(k, n, 0.9) == pytest.approx((ref.low, ref.high), rel=1e-9)
        lo, hi = clopper_pearson(n - k, n, 0.9)
        assert clopper_pearson(k, n, 0.9) == pytest.approx((1 - hi, 1 - lo), rel=1e-9)


@pytest.mark.parametrize("k, n, confidence", [(11, 10, 0.95), (-1, 10, 0.95), (0, 0, 0.95), (1, 10, 1.0),
                                              (1.5, 10, 0.95)])
def test_clopper_pearson_rejects_bad_input(k, n, confidence):
    with pytest.raises(ValueError, match="expected|must"):
        clopper_pearson(k, n, confidence)


def test_criterion_rejects_bad_values():
    with pytest.raises(ValueError, match="tau.*-0.1"):
        RangeCriterion(tau=-0.1)
    with pytest.raises(ValueError, match="alpha.*1.5"):
        RangeCriterion(alpha=1.5)


def test_status_and_images_needed():
    # all pass: "in" needs 0.025^(1/n) >= 0.95, i.e. n >= 72
    assert math.ceil(math.log(0.025) / math.log(0.95)) == 72
    assert pass_count(71, 71, CRIT).status == "undecided"
    assert pass_count(72, 72, CRIT).status == "in"
    c = pass_count(10, 10, CRIT)
    assert c.status == "undecided" and c.images_more == 62
    assert pass_count(5, 10, CRIT).status == "out"
    # 9/10 pass: more images at a 90 % pass rate eventually prove failure (upper bound < 0.95)
    more = images_needed(9, 10, CRIT)
    assert more is not None and more > 0
    n = 10 + more
    assert clopper_pearson(round(0.9 * n), n)[1] < 0.95
    assert clopper_pearson(round(0.9 * (n - 1)), n - 1)[1] >= 0.95
    assert images_needed(19, 20, CRIT) is None  # p_hat = 1 - alpha exactly: never decided
    assert pass_count(0, 0, CRIT).status == "empty"


def test_nonfinite_measurand_counts_as_failure():
    rows = [ResultRow(0, r, {BLUR: 2.0}, {"D50_rel_err": v}) for r, v in enumerate([0.0, math.nan, 0.01, 0.2])]
    (level,) = operating_range(rows, CRIT, BLUR).levels
    assert (level.count.k, level.count.n) == (2, 4)


# -------------------------------------------------------------------------------------- operating ranges


def test_operating_range_recovers_known_threshold():
    rows = oat_rows(80, threshold_at_5)
    r = operating_ranges(rows, CRIT)[BLUR]
    assert [lv.level for lv in r.levels] == [float(b) for b in range(1, 11)]
    assert [lv.count.status for lv in r.levels] == ["in"] * 4 + ["out"] * 6
    assert (r.range_lo, r.range_hi) == (1.0, 4.0)
    assert r.upper.kind == "failure" and (r.upper.last_in, r.upper.next_level) == (4.0, 5.0)
    assert r.lower.kind == "untested" and r.lower.next_level is None
    assert "[1 nm, 4 nm]" in r.statement and "between 4 nm and 5 nm" in r.statement
    assert "nothing is claimed below" in r.statement and r.unit == "nm"
    # the inert factor passes at every tested level; nothing is claimed beyond them
    dose = operating_range(rows, CRIT, DOSE)
    assert (dose.range_lo, dose.range_hi) == (30.0, 300.0)
    assert dose.lower.kind == dose.upper.kind == "untested"


def test_too_few_images_is_undecided_not_in():
    rows = oat_rows(10, threshold_at_5)
    r = operating_range(rows, CRIT, BLUR)
    statuses = [lv.count.status for lv in r.levels]
    assert "in" not in statuses and statuses[:4] == ["undecided"] * 4
    assert r.range_lo is None and r.range_hi is None
    assert all(lv.count.images_more == 62 for lv in r.levels[:4])
    assert "No operating range established" in r.statement and "undecided" in r.statement


def test_range_around_nominal_with_failures_on_both_sides_and_undecided_end():
    def fail(blur):
        return 0.5 if blur < 3 else 0.0 if blur <= 7 else 0.1  # 90 % pass above 7: not provably out at n=80

    r = operating_range(oat_rows(80, fail, nominal_blur=5.0), CRIT, BLUR)
    assert (r.range_lo, r.range_hi) == (3.0, 7.0)
    assert r.lower.kind == "failure" and (r.lower.next_level, r.lower.last_in) == (2.0, 3.0)
    assert r.upper.kind == "undecided" and r.upper.next_level == 8.0 and r.upper.images_more > 0
    assert "between 2 nm and 3 nm" in r.statement


def test_range_stops_at_first_gap_and_reports_isolated_passing_levels():
    r = operating_range(oat_rows(80, lambda b: 0.5 if b == 4 else 0.0), CRIT, BLUR)
    assert (r.range_lo, r.range_hi) == (1.0, 3.0)
    assert "not part of the range" in r.statement and "10 nm" in r.statement


# ------------------------------------------------------------------------------------ curves, robustness


def test_curves_t_interval_and_bootstrap():
    rows = oat_rows(12, threshold_at_5)
    curves = metric_curves(rows, "D50_rel_err")
    c = curves[BLUR]
    i = c.levels.index(6.0)
    v = np.array(c.values[i])
    half = stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    assert c.n[i] == 12 and c.mean[i] == pytest.approx(v.mean())
    assert (c.low[i], c.high[i]) == pytest.approx((v.mean() - half, v.mean() + half))
    assert c.nominal == 2.0 and curves[DOSE].levels == (30.0, 100.0, 300.0)
    boot = metric_curves(rows, "D50_rel_err", method="bootstrap", rng=np.random.default_rng(3))[BLUR]
    again = metric_curves(rows, "D50_rel_err", method="bootstrap", rng=np.random.default_rng(3))[BLUR]
    assert boot == again
    assert all(lo < m < hi for lo, m, hi in zip(boot.low, boot.mean, boot.high, strict=True))
    with pytest.raises(ValueError, match="rng"):
        mean_interval(v, method="bootstrap")


def test_robustness_table_hand_computed():
    nominal = {"a": 1.0, "b": 10.0}
    rows = [ResultRow(0, 0, nominal, {"F1": 0.8}), ResultRow(0, 1, nominal, {"F1": 1.0}),  # clean 0.9
            ResultRow(1, 0, {"a": 2.0, "b": 10.0}, {"F1": 0.6}),
            ResultRow(1, 1, {"a": 2.0, "b": 10.0}, {"F1": 0.6}),
            ResultRow(2, 0, {"a": 3.0, "b": 10.0}, {"F1": 0.3}),  # one image: levels weigh equally
            ResultRow(3, 0, {"a": 1.0, "b": 20.0}, {"F1": 0.9})]
    t = robustness_table(rows, "F1")
    assert t.clean == pytest.approx(0.9) and t.n_clean == 2
    a, b = t.factors
    assert a.levels == (2.0, 3.0) and a.mpc == pytest.approx(0.45) and a.rpc == pytest.approx(0.5)
    assert b.mpc == pytest.approx(0.9) and b.rpc == pytest.approx(1.0)
    assert t.mpc == pytest.approx(0.675) and t.rpc == pytest.approx(0.75)


def test_robustness_with_derived_score():
    rows = with_metric(oat_rows(4, threshold_at_5), "d50_score", lambda m: 1 - abs(m["D50_rel_err"]))
    t = robustness_table(rows, "d50_score")
    dose = next(f for f in t.factors if f.factor == DOSE)
    blur = next(f for f in t.factors if f.factor == BLUR)
    assert blur.rpc < dose.rpc <= 1.1 and 0.95 < dose.rpc


# --------------------------------------------------------------------------------- space-filling designs


def lhs_rows(n_points: int = 60, replicates: int = 2, seed: int = 0) -> list[ResultRow]:
    """Blur in [1, 20] nm and dose in [5, 500] pA (log); images fail when blur > 10 nm."""
    rng = np.random.default_rng(seed)
    u = qmc.LatinHypercube(d=2, rng=rng).random(n_points)
    rows = []
    for pid, (ub, ud) in enumerate(u):
        factors = {BLUR: 1 + 19 * ub, DOSE: 5 * 100 ** ud}
        for r in range(replicates):
            err = rng.uniform(-0.04, 0.04) + (0.2 if factors[BLUR] > 10 else 0.0)
            rows.append(ResultRow(pid, r, factors, {"D50_rel_err": err}))
    return rows


def test_pass_map_counts_sum_to_rows():
    rows = lhs_rows()
    m = pass_map(rows, CRIT, BLUR, DOSE, bins_x=4, bins_y=3, log_y=True)
    n, k = np.array(m.n), np.array(m.k)
    assert n.shape == (3, 4) and n.sum() == len(rows)
    assert k.sum() == sum(abs(r.metrics["D50_rel_err"]) <= 0.05 for r in rows)
    assert np.all(k <= n)
    assert m.edges_y[0] == pytest.approx(min(r.factors[DOSE] for r in rows))
    assert m.edges_y[-1] == pytest.approx(max(r.factors[DOSE] for r in rows))
    # blur > 10 nm fails: the top blur bins pass nothing, the bottom ones everything
    assert k[:, -1].sum() == 0 and np.all(k[:, 0] == n[:, 0])
    assert len(pass_maps(rows, CRIT)) == 1
    marg = marginal_passes(rows, CRIT, bins=4, log_scale=[DOSE])
    assert sum(b.count.n for b in marg[BLUR].bins) == len(rows) == sum(b.count.n for b in marg[DOSE].bins)
    assert marg[BLUR].bins[-1].count.k == 0 and marg[BLUR].bins[0].count.p_hat == 1.0


def test_binned_curves_cover_every_row():
    rows = lhs_rows()
    c = binned_metric_curves(rows, "D50_rel_err", bins=4)[BLUR]
    assert sum(c.n) == len(rows) and len(c.bin_edges) == 5
    assert c.mean[0] < 0.05 < c.mean[-1]


# ------------------------------------------------------------------------------------------- sensitivity


def test_given_data_indices_rank_influential_above_inert():
    rng = np.random.default_rng(0)
    u = qmc.LatinHypercube(d=2, rng=rng).random(256)
    rows = [ResultRow(i, 0, {"x1": x1, "x2": x2}, {"y": x1 + 0.01 * x2}) for i, (x1, x2) in enumerate(u)]
    fast = given_data_indices(rows, "y", method="rbd_fast", rng=np.random.default_rng(1))
    s1 = dict(zip(fast.factors, fast.indices["S1"], strict=True))
    assert s1["x1"] > 0.9 and s1["x2"] < 0.1
    pawn = given_data_indices(rows, "y", method="pawn", rng=np.random.default_rng(1))
    med = dict(zip(pawn.factors, pawn.indices["median"], strict=True))
    assert med["x1"] > 2 * med["x2"]
    json.dumps(to_jsonable(fast), allow_nan=False)


def test_saltelli_and_morris_designs():
    bounds = {"a": (0.0, 1.0), "b": (0.0, 1.0), "c": (1.0, 100.0)}
    d = saltelli_design(bounds, 32, log_scale=["c"], rng=np.random.default_rng(0))
    assert len(d.points) == 32 * (3 + 2)
    c = np.array([p["c"] for p in d.points])
    assert c.min() >= 1.0 and c.max() <= 100.0 and np.median(c) < 30  # log-uniform, median ~ 10
    rows = [ResultRow(i, r, p, {"y": p["a"] + 0.01 * p["b"]}) for i, p in enumerate(d.points) for r in range(2)]
    s = design_indices(d, rows, "y", rng=np.random.default_rng(1))
    st = dict(zip(s.factors, s.indices["ST"], strict=True))
    assert st["a"] > 0.8 and st["b"] < 0.05 and st["c"] < 0.05
    with pytest.raises(ValueError, match="missing"):
        design_indices(d, rows[:-2], "y", rng=np.random.default_rng(1))
    m = morris_design(bounds, 8, log_scale=["c"], rng=np.random.default_rng(0))
    assert len(m.points) == 8 * 4
    rows = [ResultRow(i, 0, p, {"y": p["a"] + 0.01 * p["b"]}) for i, p in enumerate(m.points)]
    morris = design_indices(m, rows, "y", rng=np.random.default_rng(1))
    mu = dict(zip(morris.factors, morris.indices["mu_star"], strict=True))
    assert mu["a"] == pytest.approx(1.0) and mu["b"] == pytest.approx(0.01) and mu["c"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="power of 2"):
        saltelli_design(bounds, 30, rng=np.random.default_rng(0))


# ------------------------------------------------------------------------------------------ input, JSON


def test_rows_from_annotation_style_dicts_and_json():
    items = [{"sweep_point": {"point_id": 0, "replicate": 1, "factors": {BLUR: 2.0}}, "D50_rel_err": 0.01,
              "F1": 0.9, "note": "x"},
             {"point_id": 1, "replicate": 0, "factors": {BLUR: 4.0}, "metrics": {"D50_rel_err": None}}]
    rows = as_rows(items)
    assert rows[0] == ResultRow(0, 1, {BLUR: 2.0}, {"D50_rel_err": 0.01, "F1": 0.9})
    assert math.isnan(rows[1].metrics["D50_rel_err"])
    with pytest.raises(ValueError, match="point_id"):
        as_rows([{"factors": {}}])
    r = operating_range(rows, CRIT, BLUR)
    text = json.dumps(to_jsonable(r), allow_nan=False)
    assert '"range_lo": null' in text
    assert factor_unit(BLUR) == "nm" and factor_unit("scan.drift_x_nm_per_s") == "nm/s"
    with pytest.raises(KeyError, match="F2"):
        metric_curves(rows, "F2")


# ------------------------------------------------------------------------------------------------- plots


def _decode(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[0] > 200 and img.shape[1] > 300
    return img


def _not_blank(img: np.ndarray) -> None:
    ink = (img < 200).any(axis=2).mean()  # dark pixels: text, lines
    colour = (img.max(axis=2).astype(int) - img.min(axis=2) > 60).mean()  # saturated pixels: data
    assert ink > 0.01 and colour > 0.005, (ink, colour)


def test_plots_render_non_blank_png():
    rows = oat_rows(80, threshold_at_5)
    ranges = operating_ranges(rows, CRIT)
    curves = metric_curves(rows, "D50_rel_err")
    _not_blank(_decode(curves_figure(curves, ranges=ranges, criterion=CRIT, title="D50 error")))
    _not_blank(_decode(pass_probability_figure(ranges)))
    lhs = lhs_rows()
    _not_blank(_decode(marginal_pass_figure(marginal_passes(lhs, CRIT, log_scale=[DOSE]), CRIT)))
    _not_blank(_decode(pass_map_figure([pass_map(lhs, CRIT, BLUR, DOSE, log_y=True)])))
    rng = np.random.default_rng(0)
    true_d = np.exp(rng.normal(np.log(160), 0.3, 300))
    _not_blank(_decode(psd_figure(true_d, true_d[:200] * 1.05)))
    sens = given_data_indices(lhs, "D50_rel_err", rng=rng)
    _not_blank(_decode(sensitivity_figure(sens)))
    assert data_uri(b"\x89PNG").startswith("data:image/png;base64,")
    with pytest.raises(ValueError, match="pred_d_nm"):
        psd_figure(true_d, [])
