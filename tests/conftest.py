"""Shared fixtures: small configs so that the suite stays fast."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.config import SimConfig, config_from_dict  # noqa: E402
from simulator.geometry.particles import Primaries  # noqa: E402


def digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below a folder, by relative path: equal digests mean byte-identical folders."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def small_config(**sections) -> SimConfig:
    """A 160 x 120 px field at 7.344 nm/px with about 25 primaries (the same density in every image); override
    any section's keys."""
    data = {
        "image": {"width_px": 160, "height_px": 120},
        "field": {"primaries_per_um2": 15.0, "density_spread": 0.0},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data)


@pytest.fixture
def small_cfg() -> SimConfig:
    return small_config()


def spheres(centres_nm, radii_nm) -> Primaries:
    """Primaries that are exact spheres at the given centres."""
    centres_nm = np.atleast_2d(np.asarray(centres_nm, float))
    radii_nm = np.atleast_1d(np.asarray(radii_nm, float))
    n = len(radii_nm)
    eye = np.broadcast_to(np.eye(3), (n, 3, 3))
    return Primaries(
        centre_nm=centres_nm,
        radius_nm=radii_nm,
        semi_axes_nm=np.repeat(radii_nm[:, None], 3, axis=1),
        shape_matrix=eye / radii_nm[:, None, None] ** 2,
        coeff=np.zeros((n, 20)),
        shell_out=np.ones(n),
        shell_in=np.ones(n),
        lipschitz_per_nm=1.0 / radii_nm,
        aggregate_id=np.arange(n, dtype=np.int32),
        planes=np.zeros((n, 0, 4)),
    )
