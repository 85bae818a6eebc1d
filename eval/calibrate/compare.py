"""Synthetic vs real: the same statistics measured on both, a statistics table and a spectrum plot.

Used by ``cli.py preview``. Real images are read at run time (never copied into the repository).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eval.calibrate.image_stats import image_statistics, radial_power_spectrum
from eval.data.reference import ReferenceImage
from simulator.config import SimConfig
from simulator.pipeline import SimImage, as_written, simulate_image

# Statistics compared in the table: (key, label, unit, is a "done when" criterion of the realism check).
TABLE_ROWS = (
    ("substrate_mean", "substrate mean", "fraction of full scale", True),
    ("substrate_noise_std", "substrate noise std (vertical differences)", "fraction of full scale", True),
    ("contrast", "particle / substrate mean", "ratio", True),
    ("substrate_std", "substrate std (noise + texture)", "fraction of full scale", False),
    ("particle_mean", "particle mean", "fraction of full scale", False),
    ("rim_to_centre", "rim (<= 2 px) / core (> 5 px) brightness", "ratio", False),
    ("coverage", "foreground fraction", "fraction", False),
    ("spectrum_slope", "power-spectrum slope, 30-300 nm", "log-log", False),
)
TOLERANCE = 0.2


@dataclass(frozen=True, slots=True)
class Comparison:
    synthetic: dict[str, float]  # median over synthetic images
    real: dict[str, float]  # median over real images
    synthetic_spectrum: tuple[np.ndarray, np.ndarray]  # (1/nm, mean power)
    real_spectrum: tuple[np.ndarray, np.ndarray]
    n_synthetic: int
    n_real: int


def simulate(cfg: SimConfig, n: int, seed: int) -> list[SimImage]:
    """Images 0..n-1 of a run: simulated once, shared by the statistics and the contact sheet."""
    return [simulate_image(cfg, seed, i) for i in range(n)]


def compare(cfg: SimConfig, reference: list[ReferenceImage], sims: list[SimImage]) -> Comparison:
    """Median statistics and mean spectra of the simulated images ``sims`` and of the reference images."""
    real = [r for r in reference if r.foreground is not None]
    if not real:
        raise ValueError("the reference images have no masks: statistics need the particle foreground")
    syn_rows, syn_spectra = [], []
    for sim in sims:
        image = as_written(sim, cfg)
        foreground = sim.render.instance_id[: cfg.image.height_px] > 0
        syn_rows.append(image_statistics(image, foreground, cfg.image.pixel_size_nm))
        syn_spectra.append(radial_power_spectrum(image, cfg.image.pixel_size_nm))
    real_rows, real_spectra = [], []
    for ref in real:
        pixel_nm = ref.pixel_size_nm or cfg.image.pixel_size_nm
        real_rows.append(image_statistics(ref.image, ref.foreground, pixel_nm))
        real_spectra.append(radial_power_spectrum(ref.image, pixel_nm))

    def median(rows):
        return {k: float(np.median([r[k] for r in rows])) for k in rows[0]}

    def mean_spectrum(spectra):
        return spectra[0][0], np.mean([s[1] for s in spectra], axis=0)

    return Comparison(median(syn_rows), median(real_rows), mean_spectrum(syn_spectra), mean_spectrum(real_spectra),
                      len(syn_rows), len(real_rows))


def markdown_table(result: Comparison) -> str:
    """The statistics table (real vs synthetic, relative difference, pass/fail of the 20 % criteria)."""
    lines = [
        f"| statistic | unit | real (median of {result.n_real}) | synthetic (median of {result.n_synthetic}) "
        "| synthetic / real | within 20 % |",
        "|---|---|---|---|---|---|",
    ]
    for key, label, unit, criterion in TABLE_ROWS:
        r, s = result.real[key], result.synthetic[key]
        ratio = s / r if r else float("nan")
        verdict = ("yes" if abs(ratio - 1) <= TOLERANCE else "**no**") if criterion else "(not a criterion)"
        lines.append(f"| {label} | {unit} | {r:.4g} | {s:.4g} | {ratio:.3f} | {verdict} |")
    return "\n".join(lines) + "\n"


def criteria_met(result: Comparison) -> bool:
    return all(
        abs(result.synthetic[k] / result.real[k] - 1) <= TOLERANCE for k, _, _, criterion in TABLE_ROWS if criterion
    )


def spectrum_plot(result: Comparison, out_png: str) -> None:
    """Radially averaged power spectra of real and synthetic images on log-log axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for (freq, power), label in ((result.real_spectrum, "real"), (result.synthetic_spectrum, "synthetic")):
        ax.loglog(freq, power, label=f"{label}")
    ax.set_xlabel("spatial frequency (1/nm)")
    ax.set_ylabel("power (a.u.)")
    ax.set_title("Radially averaged power spectrum")
    def inverse(values):
        return 1.0 / np.maximum(np.abs(values), 1e-12)

    secondary = ax.secondary_xaxis("top", functions=(inverse, inverse))
    secondary.set_xlabel("period (nm)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)


def busiest_crop(foreground: np.ndarray, height: int, width: int) -> tuple[slice, slice]:
    """The (height, width) window holding the most foreground (searched on a coarse grid)."""
    rows, cols = foreground.shape
    height, width = min(height, rows), min(width, cols)
    integral = np.pad(foreground.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    best, best_rc = -1, (0, 0)
    for r in range(0, rows - height + 1, max((rows - height) // 8, 1)):
        for c in range(0, cols - width + 1, max((cols - width) // 8, 1)):
            total = integral[r + height, c + width] - integral[r, c + width] - integral[r + height, c] + integral[r, c]
            if total > best:
                best, best_rc = total, (r, c)
    r, c = best_rc
    return slice(r, r + height), slice(c, c + width)


def labelled_tile(image: np.ndarray, label: str, pixel_size_nm: float, bar_nm: float = 200.0) -> np.ndarray:
    """uint8 tile with a caption and a scale bar drawn in its corners."""
    import cv2

    tile = np.ascontiguousarray((np.clip(image, 0, 1) * 255).astype(np.uint8))
    cv2.putText(tile, label, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 255, 1, cv2.LINE_AA)
    bar_px = int(round(bar_nm / pixel_size_nm))
    y, x1 = tile.shape[0] - 12, tile.shape[1] - 12
    cv2.line(tile, (x1 - bar_px, y), (x1, y), 255, 3)
    cv2.putText(tile, f"{bar_nm:g} nm", (x1 - bar_px, y - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 255, 1, cv2.LINE_AA)
    return tile


def preview_tiles(
    cfg: SimConfig, reference: list[ReferenceImage], sims: list[SimImage], crop_px: tuple[int, int] = (384, 512)
) -> list[np.ndarray]:
    """Tiles for a contact sheet: for each row, a synthetic crop and (if ``reference``) a real crop, both at
    their native pixel size (the same scale when the pixel sizes agree)."""
    pixel_nm = cfg.image.pixel_size_nm
    n = len(sims)
    picks = [reference[round(k * (len(reference) - 1) / max(n - 1, 1))] for k in range(n)] if reference else []
    tiles = []
    for i, sim in enumerate(sims):
        image = as_written(sim, cfg)
        window = busiest_crop(sim.render.instance_id[: cfg.image.height_px] > 0, *crop_px)
        tiles.append(labelled_tile(image[window], f"synthetic #{sim.index}", pixel_nm))
        if picks:
            ref = picks[i]
            window = busiest_crop(ref.foreground if ref.foreground is not None else ref.image > 0.3, *crop_px)
            tiles.append(labelled_tile(ref.image[window], f"real {ref.name}", ref.pixel_size_nm or pixel_nm))
    return tiles
