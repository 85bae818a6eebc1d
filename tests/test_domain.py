"""Operating domain: copula fit and sampling, typicality, range verdicts, the CLI's errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from eval.domain.check import LevelMap, Range, check_image, range_status
from eval.domain.model import fit_domain, forward, prediction_p_value, sample, typicality


def _known_rows(n: int, seed: int = 0) -> list[dict]:
    """log blur, log snr and logit coverage jointly normal with known means, SDs and correlations."""
    rng = np.random.default_rng(seed)
    cov = np.array([[0.09, 0.06, 0.0], [0.06, 0.16, -0.08], [0.0, -0.08, 0.25]])
    y = rng.multivariate_normal([np.log(4.0), np.log(30.0), np.log(0.1 / 0.9)], cov, size=n)
    return [{"pixel_size_nm": 7.344, "blur_sigma_nm": float(np.exp(a)), "snr": float(np.exp(b)),
             "coverage": float(1 / (1 + np.exp(-c)))} for a, b, c in y]


def test_copula_sampling_reproduces_means_sds_and_rank_correlations_of_a_known_distribution():
    names = ("pixel_size_nm", "blur_sigma_nm", "snr", "coverage")
    train = _known_rows(400)
    model = fit_domain(train, names, shrinkage=0.0)
    assert model.names == ("blur_sigma_nm", "snr", "coverage") and model.fixed == {"pixel_size_nm": 7.344}
    drawn = sample(model, 4000, rng=1)
    truth = train  # the model reproduces the distribution of the images it was fitted to
    for name in model.names:
        a = forward(name, [r[name] for r in drawn])  # the model's own axis (log or logit)
        b = forward(name, [r[name] for r in truth])
        assert a.mean() == pytest.approx(b.mean(), abs=0.03), name
        assert a.std() == pytest.approx(b.std(), rel=0.12), name  # KDE adds its bandwidth in quadrature
    def rho(rows, x, y):
        return stats.spearmanr([r[x] for r in rows], [r[y] for r in rows])[0]
    assert rho(drawn, "blur_sigma_nm", "snr") == pytest.approx(rho(truth, "blur_sigma_nm", "snr"), abs=0.08)
    assert rho(drawn, "snr", "coverage") == pytest.approx(rho(truth, "snr", "coverage"), abs=0.08)
    assert abs(rho(drawn, "blur_sigma_nm", "coverage")) < 0.1
    assert rho(drawn, "blur_sigma_nm", "snr") == pytest.approx(0.5, abs=0.1)  # the known correlation: 0.06 / 0.12
    assert all(r["pixel_size_nm"] == 7.344 for r in drawn[:5])  # fixed factors copied


def test_prediction_p_value_is_uniform_for_new_draws_of_the_training_distribution():
    rng = np.random.default_rng(3)
    p = []
    for _ in range(400):
        data = rng.standard_normal((12, 3)) @ np.array([[1, 0.5, 0], [0, 1, 0.3], [0, 0, 1]])
        new = rng.standard_normal(3) @ np.array([[1, 0.5, 0], [0, 1, 0.3], [0, 0, 1]])
        p.append(prediction_p_value(data, new)[1])
    p = np.array(p)
    assert np.mean(p < 0.05) == pytest.approx(0.05, abs=0.03)  # calibrated with 12 images (chi-square is not)
    assert stats.kstest(p, "uniform").pvalue > 0.01


def test_check_names_the_factor_far_out_of_range_and_passes_an_image_inside():
    train = _known_rows(20)
    model = fit_domain(train, ("pixel_size_nm", "blur_sigma_nm", "snr", "coverage"))
    blur_range = Range("probe.sigma_nm", nominal=4.0, tested_lo=2.0, tested_hi=20.0, range_lo=2.0, range_hi=10.0,
                       statement="")
    blur_map = LevelMap("probe.sigma_nm", "blur_sigma_nm", (2.0, 4.0, 10.0, 20.0), (2.2, 4.1, 9.5, 19.0))
    typical = {"pixel_size_nm": 7.344, "blur_sigma_nm": 4.0, "snr": 30.0, "coverage": 0.1}
    ok = check_image("typical", typical, model, [blur_range], {"probe.sigma_nm": blur_map})
    assert ok["verdict"] == "inside", ok["reasons"]
    blurred = {**typical, "blur_sigma_nm": 15.0}
    bad = check_image("blurred", blurred, model, [blur_range], {"probe.sigma_nm": blur_map})
    assert bad["verdict"] == "outside" and any("blur_sigma_nm" in r and "probe.sigma_nm" in r for r in bad["reasons"])
    beyond = check_image("beyond", {**typical, "blur_sigma_nm": 60.0}, model, [blur_range],
                         {"probe.sigma_nm": blur_map})
    assert beyond["verdict"] == "untested"
    coarse = check_image("coarse", {**typical, "pixel_size_nm": 15.0}, model)
    assert coarse["verdict"] == "atypical" and "pixel_size_nm" in coarse["reasons"][0]
    # a query without labels (no coverage measured from masks here) is judged on the factors it has
    partial = typicality(model, {"pixel_size_nm": 7.344, "blur_sigma_nm": 4.0, "snr": 30.0, "coverage": None})
    assert partial.factors_used == ("blur_sigma_nm", "snr") and partial.p_value > 0.05
    assert range_status(blur_range, 10.0) == "inside" and range_status(blur_range, 0.5) == "untested"


def test_domain_cli_fits_checks_samples_and_refuses_bad_input(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    rows = _known_rows(15)
    factors = tmp_path / "train.json"
    factors.write_text(json.dumps({"images": [{"file_name": f"{k:03d}.png", **r} for k, r in enumerate(rows)]}))
    runner = CliRunner()
    domain = tmp_path / "domain.json"
    result = runner.invoke(app, ["domain", "fit", str(factors), "--out", str(domain)])
    assert result.exit_code == 0, result.output
    blob = json.loads(domain.read_text())
    assert blob["n_images"] == 15 and len(blob["leave_one_out"]) == 15
    query = tmp_path / "query.json"
    query.write_text(json.dumps({"images": [{"file_name": "same.png", **rows[0]},
                                            {"file_name": "far.png", **rows[0], "snr": 0.5}]}))
    result = runner.invoke(app, ["domain", "check", str(domain), str(query), "--out", str(tmp_path / "check")])
    assert result.exit_code == 0, result.output
    verdicts = {r["image"]: r for r in json.loads((tmp_path / "check" / "domain_check.json").read_text())["results"]}
    assert verdicts["same.png"]["verdict"] == "inside"
    assert verdicts["far.png"]["verdict"] == "atypical" and "snr" in verdicts["far.png"]["reasons"][0]
    assert (tmp_path / "check" / "domain_check.png").stat().st_size > 0
    # bad inputs: one line, exit 2, nothing written
    for args, needle in (
        (["domain", "fit", str(tmp_path / "missing"), "--out", str(tmp_path / "d.json")], "does not exist"),
        (["domain", "check", str(query), str(query), "--out", str(tmp_path / "c2")], "not a domain file"),
        (["domain", "check", str(domain), str(query), "--out", str(tmp_path / "c3"), "--ranges", str(tmp_path)],
         "robustness.json"),
        (["domain", "sample", str(domain), "--base", "configs/default.toml", "--n", "2", "--out",
          str(tmp_path / "s"), "--shift", "nonsense=2"], "names no factor"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output and "Traceback" not in result.output
    few = tmp_path / "few.json"
    few.write_text(json.dumps({"images": [{"file_name": "a.png", **rows[0]}]}))
    result = runner.invoke(app, ["domain", "fit", str(few), "--out", str(tmp_path / "d2.json")])
    assert result.exit_code == 2 and "at least 5" in result.output
    assert not (tmp_path / "d2.json").exists()
