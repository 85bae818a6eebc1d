"""Uncertainty budget (issue 23): a constructed case with known variance components is recovered (coverage of
the intervals, unbiased point estimates, a zero component truncated to 0), interval oracles, bad inputs, and
resampling by image."""

from __future__ import annotations

import numpy as np
import pytest

from eval.uncertainty.budget import (
    NOISE,
    SEED,
    TEST,
    TRAIN,
    Component,
    bootstrap_image_indices,
    combine,
    images_needed_for,
    images_needed_to_halve,
    mls_difference_interval,
    particles_of_images,
    pooled_within,
    training_components,
    uncertainty_budget,
)

# the constructed case: draws x seeds = 8 x 3 training runs, 6 models x 4 noise re-draws, 6 models x 20 bootstraps
A, R, M, N_NOISE, B = 8, 3, 6, 4, 20
MU_NM = 50.0
SIGMA = {TRAIN: 3.0, SEED: 2.0, NOISE: 1.0, TEST: 1.5}
REPS = 200


def toy_tables(rng: np.random.Generator, sigma: dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A toy "model" whose D50 is mu + a_draw + b_seed + c_noise + d_test, Gaussian terms of known sigma.

    Training table: every model on the same nominal test set (one c and one d shared by all). Noise and test
    tables: per model (its own a and b), c re-drawn per noise realisation, d per bootstrap resample.
    """
    c0, d0 = rng.normal(0, sigma[NOISE]), rng.normal(0, sigma[TEST])
    a = rng.normal(0, sigma[TRAIN], (A, 1))
    training = MU_NM + a + rng.normal(0, sigma[SEED], (A, R)) + c0 + d0

    def per_model(n: int, within: float) -> np.ndarray:
        model = rng.normal(0, sigma[TRAIN], (M, 1)) + rng.normal(0, sigma[SEED], (M, 1))
        return MU_NM + model + rng.normal(0, within, (M, n))

    return training, per_model(N_NOISE, sigma[NOISE]), per_model(B, sigma[TEST])


def repeated_budgets(sigma: dict[str, float], seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [uncertainty_budget(*toy_tables(rng, sigma)) for _ in range(REPS)]


@pytest.fixture(scope="module")
def budgets():
    return repeated_budgets(SIGMA, seed=20261204)


def test_intervals_cover_the_known_components(budgets):
    coverage = {
        name: np.mean([b.component(name).variance_low <= s**2 <= b.component(name).variance_high for b in budgets])
        for name, s in SIGMA.items()
    }
    for name, cov in coverage.items():
        assert 0.88 <= cov <= 0.99, f"{name}: coverage {cov:.3f} of the 95 % interval over {REPS} repetitions"


def test_point_estimates_are_unbiased(budgets):
    """Mean of the untruncated method-of-moments variances within 4 standard errors of the truth."""
    s2 = {k: v**2 for k, v in SIGMA.items()}
    df_b, df_w = A - 1, A * (R - 1)
    var_of = {  # sampling variance of each estimator under the Gaussian model
        TRAIN: (2 * (s2[SEED] + R * s2[TRAIN]) ** 2 / df_b + 2 * s2[SEED] ** 2 / df_w) / R**2,
        SEED: 2 * s2[SEED] ** 2 / df_w,
        NOISE: 2 * s2[NOISE] ** 2 / (M * (N_NOISE - 1)),
        TEST: 2 * s2[TEST] ** 2 / (M * (B - 1)),
    }
    for name in SIGMA:
        estimates = np.array([b.component(name).variance_raw for b in budgets])
        tolerance = 4 * np.sqrt(var_of[name] / REPS)
        assert abs(estimates.mean() - s2[name]) < tolerance, (name, estimates.mean(), s2[name], tolerance)
    mean = np.mean([b.mean for b in budgets])
    assert abs(mean - MU_NM) < 4 * np.sqrt(sum(s2.values()) / REPS)


def test_combined_and_expanded_uncertainty(budgets):
    b = budgets[0]
    assert b.u_c == pytest.approx(np.sqrt(sum(c.u**2 for c in b.components)))
    assert b.U == pytest.approx(2 * b.u_c) and b.k == 2
    assert 0 < b.df_eff < np.inf
    assert np.median([x.u_c for x in budgets]) == pytest.approx(np.sqrt(sum(s**2 for s in SIGMA.values())), rel=0.1)


def test_zero_component_is_truncated_to_zero():
    budgets = repeated_budgets({**SIGMA, TRAIN: 0.0}, seed=7)
    train = [b.component(TRAIN) for b in budgets]
    assert all(c.variance >= 0 and c.variance_low >= 0 for c in train)
    assert any(c.variance_raw < 0 for c in train), "the raw estimate should go negative sometimes"
    assert np.mean([c.variance == 0 for c in train]) > 0.3
    assert np.mean([c.variance_low == 0 for c in train]) >= 0.95  # the interval reaches 0 in most repetitions
    assert np.mean([c.u for c in train]) < 0.5 * SIGMA[SEED]
    zero = next(c for c in train if c.variance_raw < 0)
    assert zero.u == 0 and zero.df == 0


def test_mls_reduces_to_chi_square_when_the_subtracted_mean_square_is_zero():
    from scipy import stats

    low, high = mls_difference_interval(4.0, 7, 0.0, 16)
    assert low == pytest.approx(7 * 4.0 / stats.chi2.ppf(0.975, 7))
    assert high == pytest.approx(7 * 4.0 / stats.chi2.ppf(0.025, 7))


def test_pooled_within_oracle():
    y = np.array([[1.0, 3.0], [10.0, 14.0]])  # within variances 2 and 8 -> pooled 5 on 2 df
    c = pooled_within(y, name=NOISE)
    assert c.variance == pytest.approx(5.0) and c.df == 2 and c.method == "chi-square"
    assert c.variance_low < 5.0 < c.variance_high


def test_welch_satterthwaite_single_component_keeps_its_df():
    c = pooled_within(np.arange(12.0).reshape(3, 4), name=NOISE)
    b = combine([c], measurand="D50_nm", mean=0.0)
    assert b.df_eff == pytest.approx(c.df) and b.u_c == pytest.approx(c.u)


@pytest.mark.parametrize(
    ("table", "match"),
    [
        (np.ones((5, 1)), r"1 seeds per row \(expected at least 2\)"),
        (np.ones((1, 3)), r"1 training-set draws \(expected at least 2\)"),
        ([[1.0, 2.0], [1.0, 2.0, 3.0]], r"ragged table.*\[2, 3\] seeds.*balanced"),
        (np.array([[1.0, np.nan], [2.0, 3.0]]), r"1 non-finite value\(s\) at \(row, col\) \[\(0, 1\)\]"),
        (np.ones(6), r"shape \(6,\).*expected 2-D"),
    ],
)
def test_bad_training_tables_raise(table, match):
    with pytest.raises(ValueError, match=match):
        training_components(table)


def test_bad_noise_table_raises():
    with pytest.raises(ValueError, match=r"input_noise: 1 repeats per row \(expected at least 2\)"):
        pooled_within(np.ones((4, 1)), name=NOISE)
    with pytest.raises(ValueError, match="non-finite"):
        uncertainty_budget(np.ones((3, 2)), [[1.0, np.inf]], np.ones((2, 3)))


def test_bootstrap_resamples_whole_images():
    rng = np.random.default_rng(3)
    n_images = 7
    particle_image = rng.permutation(np.repeat(np.arange(n_images), rng.integers(1, 9, n_images)))
    per_image = np.bincount(particle_image, minlength=n_images)
    index = bootstrap_image_indices(n_images, 50, rng=11)
    assert index.shape == (50, n_images) and index.dtype == np.int64
    assert index.min() >= 0 and index.max() < n_images
    assert np.all(np.diff(index, axis=1) >= 0)
    for row in index:
        particles = particles_of_images(particle_image, row)
        drawn = np.bincount(row, minlength=n_images)
        # every drawn image brings all its particles, once per draw; no particle of an undrawn image
        assert np.array_equal(np.bincount(particle_image[particles], minlength=n_images), drawn * per_image)
        for image in np.flatnonzero(drawn):
            got = np.sort(particles[particle_image[particles] == image])
            assert np.array_equal(got, np.sort(np.tile(np.flatnonzero(particle_image == image), drawn[image])))


def test_bootstrap_is_seeded():
    assert np.array_equal(bootstrap_image_indices(9, 5, rng=1), bootstrap_image_indices(9, 5, rng=1))
    assert not np.array_equal(bootstrap_image_indices(9, 5, rng=1), bootstrap_image_indices(9, 5, rng=2))
    with pytest.raises(ValueError, match="n_images must be an integer >= 1, got 0"):
        bootstrap_image_indices(0, 5, rng=1)


def _train_component(u: float) -> Component:
    return Component(name=TRAIN, u=u, u_low=0.0, u_high=2 * u, variance=u**2, variance_low=0.0,
                     variance_high=4 * u**2, variance_raw=u**2, df=5.0, method="MLS (Graybill-Wang)")


def test_images_needed_to_halve():
    assert images_needed_to_halve(_train_component(3.0), 40) == 160
    assert images_needed_for(_train_component(3.0), 40, target_u=1.0) == 360
    with pytest.raises(ValueError, match="nothing to halve"):
        images_needed_to_halve(_train_component(0.0), 40)
    seed_like = pooled_within(np.arange(6.0).reshape(2, 3), name=SEED)
    with pytest.raises(ValueError, match="applies to the 'training_set' component, got 'retraining'"):
        images_needed_to_halve(seed_like, 40)


def test_budget_is_plain_json(budgets):
    import json

    record = budgets[0].as_dict()
    assert json.loads(json.dumps(record)) == record
    assert all(type(v) in (str, float) for c in record["components"] for v in c.values())


def test_split_design_covers_the_known_components():
    """The issue's layout: K models on K training-set draws (own seeds), K models on one set with K seeds."""
    from eval.uncertainty.budget import training_components_split

    rng = np.random.default_rng(23)
    k = 10
    hits = {TRAIN: [], SEED: []}
    raw = []
    for _ in range(REPS):
        draws = MU_NM + rng.normal(0, SIGMA[TRAIN], k) + rng.normal(0, SIGMA[SEED], k)
        seeds = MU_NM + rng.normal(0, SIGMA[TRAIN]) + rng.normal(0, SIGMA[SEED], k)
        train, seed = training_components_split(draws, seeds)
        raw.append(train.variance_raw)
        for c in (train, seed):
            hits[c.name].append(c.variance_low <= SIGMA[c.name] ** 2 <= c.variance_high)
    for name, h in hits.items():
        assert 0.88 <= np.mean(h) <= 0.99, (name, np.mean(h))
    sd = np.sqrt((2 * (SIGMA[TRAIN] ** 2 + SIGMA[SEED] ** 2) ** 2 + 2 * SIGMA[SEED] ** 4) / (k - 1) / REPS)
    assert abs(np.mean(raw) - SIGMA[TRAIN] ** 2) < 4 * sd
    with pytest.raises(ValueError, match=r"retraining seeds: 1 models per row \(expected at least 2\)"):
        training_components_split([1.0, 2.0], [3.0])


# ------------------------------------------------------------------------------------- orchestration (cli.py)


def test_orchestration_recovers_the_toy_components_within_their_intervals(tmp_path):
    """The whole plan (units, noise re-draws, bootstraps by image, budget) on a toy measurement with known
    sigmas (training set 3, retraining 2, input noise 1; test sampling: the bootstrap SD of the fixed per-image
    effects): over 20 plan seeds each 95 % interval covers its truth at least 16 times."""
    from eval.uncertainty.run import UncertaintyPlan, _hash_normal, run

    covered: dict[str, int] = {}
    for s in range(20):
        plan = UncertaintyPlan(family="toy", train_dir=None, test_dir=None, draws=8, seeds=3, noise_draws=4,
                               test_boot=40, seed=s)
        result = run(plan, tmp_path / str(s))
        e = np.array([1.5 * _hash_normal("image", s, k) for k in range(12)])
        truth = {"training_set": 3.0, "retraining": 2.0, "input_noise": 1.0, "test_sampling": np.sqrt(e.var() / 12)}
        for c in result["budgets"]["D50_nm"]["components"]:
            covered[c["name"]] = covered.get(c["name"], 0) + (c["u_low"] <= truth[c["name"]] <= c["u_high"])
    assert set(covered) == {"training_set", "retraining", "input_noise", "test_sampling"}
    assert all(n >= 16 for n in covered.values()), covered


def test_killed_run_resumes_to_the_same_budget_and_resamples_are_by_image(tmp_path):
    import json
    from dataclasses import asdict

    from eval.uncertainty.run import UncertaintyPlan, _subset_dataset, run, run_unit, unit_seeds

    plan = UncertaintyPlan(family="toy", train_dir=None, test_dir=None, draws=3, seeds=2, noise_draws=3,
                           test_boot=10, seed=4)
    whole = run(plan, tmp_path / "whole")
    part = tmp_path / "part"
    (part / "units").mkdir(parents=True)
    units = unit_seeds(plan)
    for uid in list(units)[:2]:  # "killed" after two units, one leftover temp file of a third
        run_unit((asdict(plan), uid, units[uid], str(part)))
    (part / "units" / f"{list(units)[2]}.json.tmp").write_text("{partial")
    resumed = run(plan, part)
    assert json.dumps(resumed["budgets"], sort_keys=True) == json.dumps(whole["budgets"], sort_keys=True)
    # a bootstrap training set is made of whole images (repeats allowed), annotations follow their image
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    coco = {"images": [], "annotations": []}
    for k in range(3):
        (src / "images" / f"{k}.png").write_bytes(b"x")
        (src / "labels" / f"{k}.png").write_bytes(b"y")
        coco["images"].append({"id": k + 1, "file_name": f"{k}.png", "label_file": f"labels/{k}.png"})
        coco["annotations"] += [{"id": 10 * k + p, "image_id": k + 1, "instance_id": p} for p in (1, 2)]
    (src / "annotations.json").write_text(json.dumps(coco))
    sub = _subset_dataset(src, [2, 2, 0], tmp_path / "sub")
    got = json.loads((sub / "annotations.json").read_text())
    assert [im["file_name"] for im in got["images"]] == ["000_2.png", "001_2.png", "002_0.png"]
    assert [(a["image_id"], a["instance_id"]) for a in got["annotations"]] == [(1, 1), (1, 2), (2, 1), (2, 2),
                                                                               (3, 1), (3, 2)]
    assert len({a["id"] for a in got["annotations"]}) == 6
    assert (sub / "images" / "001_2.png").resolve() == (src / "images" / "2.png").resolve()


def test_uncertainty_cli_refuses_bad_input_before_any_training(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    runner = CliRunner()
    for args, needle in (
        (["uncertainty", "--out", str(tmp_path / "a")], "--test"),
        (["uncertainty", "--model-family", "cnn", "--out", str(tmp_path / "b")], "not a model family"),
        (["uncertainty", "--test", str(tmp_path), "--train", str(tmp_path), "--out", str(tmp_path / "c")],
         "no annotations.json"),
        (["uncertainty", "--model-family", "toy", "--k", "1", "--out", str(tmp_path / "d")], "--k"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output and "Traceback" not in result.output
    assert runner.invoke(app, ["uncertainty", "--model-family", "toy", "--k", "3", "--out",
                               str(tmp_path / "e")]).exit_code == 0
    result = runner.invoke(app, ["uncertainty", "--model-family", "toy", "--k", "4", "--out", str(tmp_path / "e")])
    assert result.exit_code == 2 and "another plan" in result.output


@pytest.mark.slow
def test_unet_family_end_to_end_on_simulated_training_sets(tmp_path):
    """The real path: fresh simulated training sets per draw, a tiny U-Net per unit, noise re-draws and test
    bootstraps of a labelled test set, every measurand's budget written."""
    import json

    from conftest import small_config
    from typer.testing import CliRunner

    from cli import app
    from simulator.config import config_to_toml
    from simulator.io.writer import write_dataset

    cfg = small_config(image={"width_px": 256, "height_px": 192})
    toml = tmp_path / "small.toml"
    toml.write_text(config_to_toml(cfg, header="test"))
    write_dataset(tmp_path / "test", cfg, n_images=3, seed=99, workers=1)
    result = CliRunner().invoke(app, [
        "uncertainty", "--test", str(tmp_path / "test"), "--train-config", str(toml), "--train-images", "3",
        "--model-family", "unet", "--k", "2", "--seeds", "2", "--noise", "2", "--boot", "5", "--steps", "15",
        "--budget-cpu", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    blob = json.loads((tmp_path / "out" / "uncertainty.json").read_text())
    assert len(blob["models"]) == 4 and {m["unit"] for m in blob["models"]} == {"d00_s00", "d00_s01", "d01_s00",
                                                                                   "d01_s01"}
    assert "F1" in blob["budgets"]  # 15 steps: sizes may be missing (no prediction), F1 is always defined
    assert ("D50_nm" in blob["budgets"]) == all(np.isfinite(m["nominal"]["D50_nm"]) for m in blob["models"])
    unit = json.loads((tmp_path / "out" / "units" / "d00_s00.json").read_text())
    assert len(unit["nominal"]) == 3 and len(unit["noise"]) == 2
    assert not list((tmp_path / "out" / "work").glob("*.pt"))  # weights are not kept
    # the two seeds of a draw share its simulated training set, the two draws do not
    a, b = (json.loads((tmp_path / "out" / "units" / f"d0{i}_s00.json").read_text())["select_seed"] for i in (0, 1))
    assert a != b
