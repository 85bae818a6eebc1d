"""Configs: strict loading, errors that name the key, the value and the range; defaults documented."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from simulator.config import ConfigError, SimConfig, config_from_dict, config_hash, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"primary": {"diameter_gsd": 0.5}}, r"primary\.diameter_gsd must be in \[1, 3\], got 0\.5"),
        (
            {"primary": {"shape": "cube"}},
            r"primary\.shape must be one of 'sphere', 'ellipsoid', 'irregular', 'faceted', got 'cube'",
        ),
        ({"primary": {"colour": 1}}, r"unknown key primary\.colour; expected one of .*diameter_gmean_nm"),
        ({"physics": {}}, r"unknown section \[physics\]"),
        ({"image": {"width_px": 10.5}}, r"image\.width_px must be a int, got 10\.5"),
        ({"image": {"bit_depth": 12}}, r"image\.bit_depth must be 8 or 16, got 12"),
        ({"aggregate": {"overlap": 0.5}}, r"aggregate\.overlap must be in \[0, 0\.5\), got 0\.5"),
        ({"field": {"coverage": 0.2}}, r"field\.coverage and field\.primaries_per_um2 are both set"),
        ({"output": {"label_maps": "yes"}}, r"output\.label_maps must be a bool, got 'yes'"),
    ],
)
def test_bad_values_are_refused_with_the_key_value_and_range(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data, source="bad.toml")


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.toml: config file not found"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[image\nwidth_px = 3")
    with pytest.raises(ConfigError, match="broken.toml: not valid TOML"):
        load_config(broken)
    bad = tmp_path / "bad.toml"
    bad.write_text("[primary]\ndiameter_gmean_nm = -3\n")
    with pytest.raises(ConfigError, match=r"bad.toml: primary\.diameter_gmean_nm must be in \(0, 100000\], got -3\.0"):
        load_config(bad)


def test_default_toml_is_the_documented_defaults():
    cfg = load_config(ROOT / "configs" / "default.toml")
    assert cfg == SimConfig()
    assert config_hash(cfg) == config_hash(SimConfig())
    assert config_hash(config_from_dict({"aggregate": {"overlap": 0.2}})) != config_hash(cfg)
    docs = (ROOT / "docs" / "parameters.md").read_text()
    for section in dataclasses.fields(SimConfig):
        for key in dataclasses.fields(getattr(cfg, section.name)):
            assert f"`{section.name}.{key.name}`" in docs, f"{section.name}.{key.name} is not documented"


@pytest.mark.slow
def test_cli_reports_config_errors_and_refuses_non_empty_output(tmp_path):
    runner = CliRunner()
    bad = tmp_path / "bad.toml"
    bad.write_text("[aggregate]\nfractal_dimension = 3.5\n")
    result = runner.invoke(app, ["simulate", str(bad), "--n", "1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "aggregate.fractal_dimension must be in [1, 3], got 3.5" in result.output
    assert not (tmp_path / "o").exists()

    good = tmp_path / "good.toml"
    good.write_text("[image]\nwidth_px = 96\nheight_px = 64\n[field]\nprimaries_per_um2 = 20.0\n")
    out = tmp_path / "ds"
    result = runner.invoke(app, ["simulate", str(good), "--n", "2", "--out", str(out), "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert (out / "annotations.json").exists() and (out / "preview.png").exists()
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000001.png"]
    result = runner.invoke(app, ["simulate", str(good), "--n", "1", "--out", str(out)])
    assert result.exit_code == 2 and "--overwrite" in result.output
