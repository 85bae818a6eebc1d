"""The realism report: C2ST, KID and distances of two image sets, with a summary plot and HTML."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.stats import wasserstein_distance

from eval.calibrate.image_stats import gradient_magnitude, radial_power_spectrum
from eval.realism.c2st import C2STResult, c2st
from eval.realism.config import RealismConfig
from eval.realism.data import ImageSet, at_pixel_size, normalized
from eval.realism.kid import kid_score

# ----------------------------------------------------------------------------------------------- distances


def _pooled_sample(arrays, n: int, rng: np.random.Generator) -> np.ndarray:
    flat = np.concatenate([x.ravel() for x in arrays])
    return flat[rng.integers(0, flat.size, min(n, flat.size))]


def mean_spectrum(images: ImageSet, crop_px: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Mean radially averaged power spectrum over the square tiles of every image (all whole tiles of
    ``crop_px``, centred as a grid; one central crop alone would make the mean depend on whether it holds a
    particle)."""
    side = min(crop_px, *(min(im.shape) for im in images.images))
    spectra = []
    for im in images.images:
        rows, cols = im.shape[0] // side, im.shape[1] // side
        y0, x0 = (im.shape[0] - rows * side) // 2, (im.shape[1] - cols * side) // 2
        for r in range(rows):
            for c in range(cols):
                y, x = y0 + r * side, x0 + c * side
                freq, power = radial_power_spectrum(im[y : y + side, x : x + side], images.pixel_size_nm)
                spectra.append(power)
    return freq, np.mean(spectra, axis=0)


def distances(a: ImageSet, b: ImageSet, *, seed: int = 0, n_pixels: int = 400_000) -> dict[str, float]:
    """Interpretable distances between two sets at the same pixel size."""
    rng = np.random.default_rng(seed)
    ia, ib = _pooled_sample(a.images, n_pixels, rng), _pooled_sample(b.images, n_pixels, rng)
    grad_a = _pooled_sample([gradient_magnitude(im, a.pixel_size_nm) for im in a.images], n_pixels, rng)
    grad_b = _pooled_sample([gradient_magnitude(im, b.pixel_size_nm) for im in b.images], n_pixels, rng)
    side = min(256, *(min(im.shape) for im in a.images + b.images))
    freq, pa = mean_spectrum(a, side)
    _, pb = mean_spectrum(b, side)
    ok = (pa > 0) & (pb > 0)
    return {
        "intensity_w1": float(wasserstein_distance(ia, ib)),
        "intensity_mean_a": float(ia.mean()), "intensity_mean_b": float(ib.mean()),
        "gradient_w1_per_nm": float(wasserstein_distance(grad_a, grad_b)),
        "gradient_median_a_per_nm": float(np.median(grad_a)), "gradient_median_b_per_nm": float(np.median(grad_b)),
        "spectrum_rms_log10": float(np.sqrt(np.mean((np.log10(pa[ok]) - np.log10(pb[ok])) ** 2))),
    }


# ----------------------------------------------------------------------------------------------- report


@dataclass(frozen=True, slots=True)
class RealismReport:
    set_a: str
    set_b: str
    pixel_size_nm: float
    c2st: C2STResult
    kid: float
    kid_sd: float
    distances: dict[str, float]
    config: RealismConfig

    def to_json(self) -> dict:
        return {
            "set_a": self.set_a, "set_b": self.set_b, "pixel_size_nm": self.pixel_size_nm,
            "c2st_accuracy": self.c2st.accuracy, "c2st_ci95": [self.c2st.ci_low, self.c2st.ci_high],
            "c2st": asdict(self.c2st), "kid": self.kid, "kid_sd": self.kid_sd, "distances": self.distances,
            "config": asdict(self.config),
            "interpretation": "C2ST accuracy 0.5 = indistinguishable, 1.0 = trivially separable; the interval "
                              "is a bootstrap over held-out images",
        }


def realism(a: ImageSet, b: ImageSet, cfg: RealismConfig = RealismConfig(), on_step=None) -> RealismReport:
    """C2ST, KID and distances between two image sets; set B is resampled to A's pixel size.

    With ``cfg.normalize == "image"`` (default) C2ST and KID see every image scaled by its own intensity
    percentiles: brightness and contrast are operator settings that differ from image to image in any real
    set, and would otherwise dominate the classifier; they remain measured by the intensity distance.
    """
    b = at_pixel_size(b, a.pixel_size_nm)
    na, nb = (normalized(a), normalized(b)) if cfg.normalize == "image" else (a, b)
    result = c2st(na, nb, cfg, on_step)
    kid_mean, kid_sd = kid_score(na, nb, cfg)
    return RealismReport(a.name, b.name, a.pixel_size_nm, result, kid_mean, kid_sd,
                         distances(a, b, seed=cfg.seed), cfg)


def summary_plot(a: ImageSet, b: ImageSet, report: RealismReport, out_png: str | Path) -> None:
    """Intensity and gradient distributions, power spectra, and the C2ST score with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = at_pixel_size(b, a.pixel_size_nm)
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    ia, ib = _pooled_sample(a.images, 200_000, rng), _pooled_sample(b.images, 200_000, rng)
    bins = np.linspace(0, 1, 129)
    axes[0].hist(ia, bins, density=True, histtype="step", label=a.name)
    axes[0].hist(ib, bins, density=True, histtype="step", label=b.name)
    axes[0].set(xlabel="intensity", ylabel="density", yscale="log", title="intensity")
    axes[0].legend(fontsize=8)
    ga = _pooled_sample([gradient_magnitude(im, a.pixel_size_nm) for im in a.images], 200_000, rng)
    gb = _pooled_sample([gradient_magnitude(im, b.pixel_size_nm) for im in b.images], 200_000, rng)
    gbins = np.linspace(0, np.percentile(np.concatenate([ga, gb]), 99.5), 129)
    axes[1].hist(ga, gbins, density=True, histtype="step")
    axes[1].hist(gb, gbins, density=True, histtype="step")
    axes[1].set(xlabel="gradient magnitude (1/nm)", yscale="log", title="gradient magnitude")
    side = min(256, *(min(im.shape) for im in a.images + b.images))
    for s in (a, b):
        freq, power = mean_spectrum(s, side)
        axes[2].loglog(freq, power, label=s.name)
    axes[2].set(xlabel="spatial frequency (1/nm)", ylabel="power", title="radially averaged power spectrum")
    r = report.c2st
    axes[3].errorbar([0], [r.accuracy], yerr=[[r.accuracy - r.ci_low], [r.ci_high - r.accuracy]], fmt="o",
                     capsize=6, color="k")
    axes[3].axhline(0.5, ls="--", color="tab:green", lw=1)
    axes[3].axhline(1.0, ls="--", color="tab:red", lw=1)
    axes[3].set(xlim=(-1, 1), ylim=(0.4, 1.02), xticks=[], ylabel="held-out balanced accuracy",
                title=f"C2ST {r.accuracy:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def html_summary(report: RealismReport, png_name: str) -> str:
    """A short self-contained page: the scores with their meaning, and the summary figure."""
    import base64

    r = report.c2st
    png = base64.b64encode(Path(png_name).read_bytes()).decode()
    rows = "".join(f"<tr><td>{k}</td><td>{v:.5g}</td></tr>" for k, v in report.distances.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>realism: {report.set_a} vs {report.set_b}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td{{padding:2px 12px}}</style></head><body>
<h1>Realism: {report.set_a} vs {report.set_b}</h1>
<p>Both sets at {report.pixel_size_nm:.3f} nm/px. C2ST: a CNN trained from scratch on {report.config.crop_px} px
crops, cross-fitted over two folds of images; accuracy on crops of held-out images, 95 % interval by bootstrap over
images. 0.5 = indistinguishable, 1.0 = trivially separable.</p>
<table><tr><td><b>C2ST balanced accuracy</b></td><td><b>{r.accuracy:.3f}</b> [{r.ci_low:.3f}, {r.ci_high:.3f}]</td></tr>
<tr><td>A crops called A / B crops called B</td><td>{r.accuracy_a:.3f} / {r.accuracy_b:.3f}</td></tr>
<tr><td>images A / B, test crops</td><td>{r.n_images_a} / {r.n_images_b}, {r.n_test_crops}</td></tr>
<tr><td>KID (self-trained denoising-autoencoder features)</td>
<td>{report.kid:.4g} &plusmn; {report.kid_sd:.2g}</td></tr>
{rows}</table>
<img src="data:image/png;base64,{png}" style="width:100%">
</body></html>
"""
