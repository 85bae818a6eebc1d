"""Figures for robustness reports: every function returns PNG bytes (``data_uri`` embeds them in HTML).

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no global state, no files):

- ``curves_figure``: metric vs level per factor (small multiples): per-image values, mean and confidence
  band, the +-tau lines, the operating range shaded, failure brackets hatched, tested levels as ticks
  coloured by their pass status, the nominal level dotted;
- ``pass_probability_figure``: pass probability per tested level with Clopper-Pearson error bars and the
  1 - alpha line; ``marginal_pass_figure``: the same per bin for space-filling designs;
- ``pass_map_figure``: 2-D pass-probability heat maps with k/n per cell;
- ``psd_figure``: true vs predicted particle-size distributions (ECD), histogram and CDF on a log axis;
- ``sensitivity_figure``: sensitivity indices per factor with their confidence.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from eval.robustness.binomial import PassCount
from eval.robustness.designs import SensitivityResult
from eval.robustness.ranges import MarginalPass, OperatingRange, PassMap
from eval.robustness.rows import RangeCriterion, factor_unit
from eval.robustness.tables import Curve

STATUS_COLOURS = {"in": "#2e7d32", "out": "#c62828", "undecided": "#9e9e9e", "empty": "#e0e0e0"}
_PANEL_IN = (4.3, 3.3)
_DPI = 110
_WIDE_RATIO = 20.0  # positive levels spanning more than this ratio get a log axis


def png_bytes(fig: Figure, *, dpi: int = _DPI) -> bytes:
    """The figure as PNG bytes (Agg)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """A PNG as a data URI for a self-contained HTML report: ``<img src="...">``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def axis_label(factor: str) -> str:
    """'probe.sigma_nm [nm]'."""
    unit = factor_unit(factor)
    return f"{factor} [{unit}]" if unit else factor


def _grid(n: int, ncols: int | None = None, panel: tuple[float, float] = _PANEL_IN) -> tuple[Figure, list]:
    if n < 1:
        raise ValueError("nothing to plot: expected at least one panel")
    ncols = ncols or min(3, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _wide(levels: Sequence[float]) -> bool:
    v = np.asarray(levels, dtype=float)
    return v.size > 1 and bool((v > 0).all()) and v.max() / v.min() >= _WIDE_RATIO


def _log_axis(axis) -> None:
    """Log axis labelled 1, 2, 5 x 10^k in plain numbers (no overlapping minor labels)."""
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _level_ticks(ax, levels: Sequence[float], log: bool) -> None:
    if log:
        ax.set_xscale("log")
        _log_axis(ax.xaxis)
    if len(levels) <= 12:
        ax.set_xticks(levels, [f"{v:.3g}" for v in levels], minor=False)
        ax.minorticks_off()
        if len(levels) > 6:
            ax.tick_params(axis="x", labelrotation=45)
    lo, hi = min(levels), max(levels)
    if hi > lo:
        pad = (hi / lo) ** 0.04 if log else 0.04 * (hi - lo)
        ax.set_xlim(*((lo / pad, hi * pad) if log else (lo - pad, hi + pad)))


def _nan(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def curves_figure(curves: Mapping[str, Curve], *, ranges: Mapping[str, OperatingRange] | None = None,
                  criterion: RangeCriterion | None = None, title: str | None = None) -> bytes:
    """Metric vs level per factor with the mean, its band, per-image values, tau lines and operating ranges."""
    fig, axes = _grid(len(curves))
    ranges = ranges or {}
    show_tau = False
    for ax, (factor, c) in zip(axes, curves.items(), strict=True):
        x = np.asarray(c.levels, dtype=float)
        log = _wide(x)
        for level, vals in zip(x, c.values, strict=True):
            ax.scatter(np.full(len(vals), level), vals, s=9, color="0.55", alpha=0.45, linewidths=0, zorder=2)
        ax.fill_between(x, _nan(c.low), _nan(c.high), color="#1565c0", alpha=0.22, linewidth=0, zorder=1)
        ax.plot(x, _nan(c.mean), "o-", color="#1565c0", ms=4, lw=1.6, zorder=3)
        if criterion is not None and c.metric == criterion.measurand:
            show_tau = True
            lows = [v for vals in c.values for v in vals] + [v for v in c.low if v is not None]
            for t in (criterion.tau, -criterion.tau) if (not lows or min(lows) < 0) else (criterion.tau,):
                ax.axhline(t, color="#c62828", ls="--", lw=1.1, zorder=2)
            ax.axhline(0.0, color="0.3", lw=0.6, zorder=0)
        r = ranges.get(factor)
        if r is not None:
            if r.range_lo is not None:
                if r.range_hi > r.range_lo:
                    ax.axvspan(r.range_lo, r.range_hi, color=STATUS_COLOURS["in"], alpha=0.13, lw=0, zorder=0)
                else:
                    ax.axvline(r.range_lo, color=STATUS_COLOURS["in"], alpha=0.35, lw=6, zorder=0)
            for end in (r.lower, r.upper):
                if end is not None and end.next_level is not None:
                    lo, hi = sorted((end.last_in, end.next_level))
                    colour = STATUS_COLOURS["out"] if end.kind == "failure" else STATUS_COLOURS["undecided"]
                    ax.axvspan(lo, hi, facecolor="none", edgecolor=colour, hatch="///", alpha=0.45, lw=0,
                               zorder=0)
            status = {lv.level: lv.count.status for lv in r.levels}
            colours = [STATUS_COLOURS[status.get(v, "empty")] for v in x]
            ax.scatter(x, np.zeros_like(x), marker="^", s=34, c=colours, clip_on=False, zorder=4,
                       transform=ax.get_xaxis_transform())
        if c.nominal is not None:
            ax.axvline(c.nominal, color="0.2", ls=":", lw=1.2, zorder=1)
        _level_ticks(ax, list(x), log)
        ax.set_xlabel(axis_label(factor) + (" (bin centres)" if c.bin_edges is not None else ""))
        ax.set_ylabel(c.metric)
        ax.grid(alpha=0.25, lw=0.5)
        ax.set_title(factor_title(factor), fontsize=10)
    method = {"t": "Student-t", "bootstrap": "bootstrap"}.get(next(iter(curves.values())).method, "")
    conf = next(iter(curves.values())).confidence
    handles = [Line2D([], [], color="#1565c0", marker="o", ms=4, label="mean"),
               Patch(color="#1565c0", alpha=0.22, label=f"{100 * conf:g} % CI of mean ({method})"),
               Line2D([], [], color="0.55", marker="o", ls="", ms=3, label="per image")]
    if show_tau:
        handles.append(Line2D([], [], color="#c62828", ls="--", label=f"±τ = {criterion.tau:g}"))
    if ranges:
        handles += [Patch(color=STATUS_COLOURS["in"], alpha=0.2, label="operating range (tested levels)"),
                    Patch(facecolor="none", edgecolor=STATUS_COLOURS["out"], hatch="///",
                          label="failure boundary bracket"),
                    Line2D([], [], marker="^", ls="", color=STATUS_COLOURS["in"], label="level in"),
                    Line2D([], [], marker="^", ls="", color=STATUS_COLOURS["out"], label="level out"),
                    Line2D([], [], marker="^", ls="", color=STATUS_COLOURS["undecided"], label="undecided")]
    if any(c.nominal is not None for c in curves.values()):
        handles.append(Line2D([], [], color="0.2", ls=":", label="nominal"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(5, len(handles)), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return png_bytes(fig)


def factor_title(factor: str) -> str:
    """The parameter name without its section: 'probe.sigma_nm' -> 'sigma_nm'."""
    return factor.partition(".")[2] or factor


def _bars(ax, labels: Sequence[str], counts: Sequence[PassCount], criterion: RangeCriterion,
          nominal_index: int | None = None) -> None:
    pos = np.arange(len(counts))
    p = _nan([c.p_hat for c in counts])
    lo = _nan([c.low for c in counts])
    hi = _nan([c.high for c in counts])
    colours = [STATUS_COLOURS[c.status] for c in counts]
    ax.bar(pos, np.nan_to_num(p), color=colours, alpha=0.85, width=0.7, zorder=2)
    ok = np.isfinite(p)
    ax.errorbar(pos[ok], p[ok], yerr=[p[ok] - lo[ok], hi[ok] - p[ok]], fmt="none", ecolor="0.15", capsize=3,
                lw=1, zorder=3)
    ax.axhline(criterion.target, color="0.15", ls="--", lw=1, zorder=1)
    many = len(labels) > 5 or max(map(len, labels)) > 8
    ticks = [f"{label}\n{c.k}/{c.n}" for label, c in zip(labels, counts, strict=True)]
    ax.set_xticks(pos, ticks, fontsize=7 if many else 8, rotation=35 if max(map(len, labels)) > 8 else 0,
                  ha="right" if max(map(len, labels)) > 8 else "center")
    if nominal_index is not None:
        ax.get_xticklabels()[nominal_index].set_fontweight("bold")
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("P(pass)")
    ax.grid(axis="y", alpha=0.25, lw=0.5)


def _status_legend(fig: Figure, criterion: RangeCriterion, extra: str = "") -> None:
    handles = [Patch(color=STATUS_COLOURS[s], label=s) for s in ("in", "out", "undecided")]
    handles.append(Line2D([], [], color="0.15", ls="--", label=f"1 - α = {criterion.target:g}"))
    handles.append(Line2D([], [], color="0.15", marker="_", ms=8, ls="",
                          label=f"{100 * criterion.confidence:g} % Clopper-Pearson"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False,
               title=f"pass: |{criterion.measurand}| <= {criterion.tau:g}{extra}", title_fontsize=8)


def pass_probability_figure(ranges: Mapping[str, OperatingRange], *, title: str | None = None) -> bytes:
    """Pass probability per tested level and factor with Clopper-Pearson error bars (nominal level in bold)."""
    fig, axes = _grid(len(ranges))
    criterion = next(iter(ranges.values())).criterion
    for ax, (factor, r) in zip(axes, ranges.items(), strict=True):
        labels = [f"{lv.level:.3g}" for lv in r.levels]
        nominal = next((j for j, lv in enumerate(r.levels) if lv.is_nominal), None)
        _bars(ax, labels, [lv.count for lv in r.levels], criterion, nominal)
        ax.set_xlabel(axis_label(factor))
        ax.set_title(factor_title(factor), fontsize=10)
    _status_legend(fig, criterion, "; nominal level in bold; ticks: level and k/n images passing")
    if title:
        fig.suptitle(title, fontsize=11)
    return png_bytes(fig)


def marginal_pass_figure(marginals: Mapping[str, MarginalPass], criterion: RangeCriterion, *,
                         title: str | None = None) -> bytes:
    """Marginal pass probability per factor bin (space-filling designs) with Clopper-Pearson error bars."""
    fig, axes = _grid(len(marginals))
    for ax, (factor, m) in zip(axes, marginals.items(), strict=True):
        labels = [f"{b.lo:.3g}–{b.hi:.3g}" for b in m.bins]
        _bars(ax, labels, [b.count for b in m.bins], criterion)
        ax.set_xlabel(axis_label(factor) + (" (log bins)" if m.log else ""))
        ax.set_title(factor_title(factor), fontsize=10)
    _status_legend(fig, criterion, "; other factors marginalised; ticks: bin and k/n images passing")
    if title:
        fig.suptitle(title, fontsize=11)
    return png_bytes(fig)


def pass_map_figure(maps: Sequence[PassMap], *, title: str | None = None) -> bytes:
    """2-D pass-probability heat maps (one per factor pair) with k/n in every cell; empty cells hatched."""
    fig, axes = _grid(len(maps), panel=(4.4, 3.6))
    norm = Normalize(0.0, 1.0)
    mesh = None
    for ax, m in zip(axes, maps, strict=True):
        p = np.ma.masked_invalid(_nan([v for row in m.p_hat for v in row]).reshape(len(m.n), len(m.n[0])))
        ex, ey = np.asarray(m.edges_x), np.asarray(m.edges_y)
        ax.set_facecolor(STATUS_COLOURS["empty"])
        ax.patch.set_hatch("xx")
        ax.patch.set_edgecolor("white")
        mesh = ax.pcolormesh(ex, ey, p, cmap="RdYlGn", norm=norm, edgecolors="white", linewidth=0.8)
        if m.log_x:
            ax.set_xscale("log")
            _log_axis(ax.xaxis)
        if m.log_y:
            ax.set_yscale("log")
            _log_axis(ax.yaxis)
        cx = np.sqrt(ex[:-1] * ex[1:]) if m.log_x else (ex[:-1] + ex[1:]) / 2
        cy = np.sqrt(ey[:-1] * ey[1:]) if m.log_y else (ey[:-1] + ey[1:]) / 2
        small = len(cx) * len(cy) > 36
        for i, y in enumerate(cy):
            for j, x in enumerate(cx):
                n, k = m.n[i][j], m.k[i][j]
                if n:
                    mark = {"in": " ✓", "out": " ✗"}.get(m.status[i][j], "")
                    dark = not 0.2 <= k / n <= 0.85
                    ax.text(x, y, f"{k}/{n}{mark}", ha="center", va="center", fontsize=6 if small else 8,
                            color="white" if dark else "black")
        ax.set_xlabel(axis_label(m.factor_x))
        ax.set_ylabel(axis_label(m.factor_y))
        ax.set_title(f"{factor_title(m.factor_y)} vs {factor_title(m.factor_x)}", fontsize=10)
    if mesh is not None:
        fig.colorbar(mesh, ax=axes, label="P(pass), k/n per cell (✓ in, ✗ out)", shrink=0.85)
    if title:
        fig.suptitle(title, fontsize=11)
    return png_bytes(fig)


def _diameters(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    d = np.asarray(values, dtype=float).ravel()
    d = d[np.isfinite(d)]
    if d.size == 0 or (d <= 0).any():
        raise ValueError(f"{name} must hold at least one finite diameter > 0 nm, got {d.size} finite values "
                         f"(min {d.min() if d.size else None!r})")
    return d


def psd_figure(true_d_nm: Sequence[float] | np.ndarray, pred_d_nm: Sequence[float] | np.ndarray, *,
               labels: tuple[str, str] = ("true", "predicted"), n_bins: int = 30,
               title: str | None = None) -> bytes:
    """True vs predicted particle-size distributions (ECD, nm): histogram per log bin and CDF, log x axis."""
    t, p = _diameters(true_d_nm, "true_d_nm"), _diameters(pred_d_nm, "pred_d_nm")
    lo, hi = min(t.min(), p.min()), max(t.max(), p.max())
    edges = np.geomspace(lo / 1.05, hi * 1.05, n_bins + 1)
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    ax_h, ax_c = fig.subplots(1, 2)
    colours = ("#37474f", "#e65100")
    d50 = []
    for d, label, colour in zip((t, p), labels, colours, strict=True):
        hist, _ = np.histogram(d, edges)
        ax_h.stairs(hist / d.size, edges, color=colour, lw=1.8, label=f"{label} (n = {d.size})",
                    fill=label == labels[0], alpha=0.25 if label == labels[0] else 1.0)
        if label == labels[0]:
            ax_h.stairs(hist / d.size, edges, color=colour, lw=1.8)
        s = np.sort(d)
        ax_c.step(s, np.arange(1, s.size + 1) / s.size, where="post", color=colour, lw=1.8, label=label)
        med = float(np.median(d))
        d50.append(med)
        for ax in (ax_h, ax_c):
            ax.axvline(med, color=colour, ls="--", lw=1)
    for ax in (ax_h, ax_c):
        ax.set_xscale("log")
        _log_axis(ax.xaxis)
        ax.set_xlabel("ECD [nm]")
        ax.grid(alpha=0.25, lw=0.5, which="both")
    ax_h.set_ylabel("fraction of particles per log bin")
    ax_c.set_ylabel("cumulative fraction")
    ax_c.set_ylim(0, 1.02)
    ax_c.axhline(0.5, color="0.5", lw=0.6)
    ax_h.legend(fontsize=8, frameon=False)
    err = 100 * (d50[1] - d50[0]) / d50[0]
    ax_c.set_title(f"D50: {labels[0]} {d50[0]:.1f} nm, {labels[1]} {d50[1]:.1f} nm ({err:+.1f} %)", fontsize=9)
    ax_h.set_title("size distribution (dashed: D50)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return png_bytes(fig)


def _conf_key(result: SensitivityResult, key: str) -> str | None:
    conf = f"{key}_conf"
    return conf if conf in result.indices else None


def sensitivity_figure(results: SensitivityResult | Sequence[SensitivityResult], *,
                       title: str | None = None) -> bytes:
    """Horizontal bars of sensitivity indices per factor, ranked, with their confidence half-widths.

    Sobol: S1 and ST side by side; RBD-FAST: S1; PAWN: median KS with min-max whiskers; Morris: mu* and sigma.
    """
    results = [results] if isinstance(results, SensitivityResult) else list(results)
    fig, axes = _grid(len(results), ncols=min(2, len(results)), panel=(5.2, 0.5 + 0.45 * max(
        len(r.factors) for r in results) + 1.0))
    for ax, r in zip(axes, results, strict=True):
        keys = {"sobol": ("S1", "ST"), "morris": ("mu_star", "sigma")}.get(r.method, (r.primary,))
        order = np.argsort(_nan(r.indices[r.primary]))  # largest at the top
        pos = np.arange(len(order))
        height = 0.8 / len(keys)
        for j, key in enumerate(keys):
            v = _nan(r.indices[key])[order]
            xerr = None
            if (ck := _conf_key(r, key)) is not None:
                xerr = _nan(r.indices[ck])[order]
            elif r.method == "pawn":
                xerr = [v - _nan(r.indices["minimum"])[order], _nan(r.indices["maximum"])[order] - v]
            ax.barh(pos + ((len(keys) - 1) / 2 - j) * height, np.nan_to_num(v), height=height, xerr=xerr,
                    capsize=3, label=key, color=("#1565c0", "#ef6c00")[j], alpha=0.85, error_kw={"lw": 1})
        ax.set_yticks(pos, [r.factors[i] for i in order])
        ax.axvline(0, color="0.3", lw=0.6)
        ax.grid(axis="x", alpha=0.25, lw=0.5)
        xlabel = {"sobol": "Sobol index", "rbd_fast": "first-order index S1 (RBD-FAST)",
                  "pawn": "PAWN index (KS, median; whiskers min-max)", "morris": f"elementary effect on {r.metric}"}
        ax.set_xlabel(xlabel.get(r.method, r.primary))
        ax.set_title(f"{r.metric}: {r.method} (n = {r.n_samples})", fontsize=10)
        if len(keys) > 1 or _conf_key(r, keys[0]):
            ax.legend(fontsize=8, frameon=False, loc="lower right",
                      title="bars: ± conf. half-width" if _conf_key(r, keys[0]) else None, title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    return png_bytes(fig)
