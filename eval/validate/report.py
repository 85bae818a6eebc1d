"""validation.html and the text table of ``cli.py validate``.

The page: the verdict table, the two error profiles side by side (bars with their bootstrap intervals, and the
differences against the tolerances), the sweep curves when there is a sweep, and example crops of the error
types behind each disagreeing metric (worst splits, merges, misses, false detections, size errors on each
side; true contours green, predicted magenta, ignored true particles blue, the example's own particle yellow).
The page holds crops of the real images: it belongs in the user's output folder, never in the repository.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from matplotlib.figure import Figure

from eval.metrics.matching import MatchConfig, instance_overlaps
from eval.report.plots import axis_label, data_uri, png_bytes
from eval.report.report import STYLE, fmt, jpeg_uri
from eval.validate.compare import METRIC_MEANINGS, VALIDATED_METRICS
from simulator.preview import instance_boundaries

# error types behind each metric: what to look at when it disagrees
METRIC_ERRORS = {
    "AP50": ("miss", "false"), "F1": ("miss", "false"), "precision": ("false",), "recall": ("miss",),
    "split_rate": ("split",), "merge_rate": ("merge",), "ECD_rel_bias": ("size",), "D10_rel_err": ("size",),
    "D50_rel_err": ("size",), "D90_rel_err": ("size",),
}  # fmt: skip
ERROR_MEANINGS = {"split": "true particle cut into several predictions (most parts first)",
                  "merge": "prediction covering several true particles (most particles first)",
                  "miss": "counted true particle without a match (largest first)",
                  "false": "counted prediction without a match (largest first)",
                  "size": "matched particle with the largest relative ECD error"}
COLOURS = {"real": "#1565c0", "synthetic": "#ef6c00"}


# --------------------------------------------------------------------------------------- error examples


@dataclass(frozen=True, slots=True)
class ErrorExample:
    kind: str  # split | merge | miss | false | size
    image: int  # index of the image on its side
    severity: float  # larger is worse (parts, area in px, |relative ECD error|)
    true_id: int  # the particle the example is about (0: none)
    pred_id: int


def error_examples(sample, match, image_index: int, match_config: MatchConfig = MatchConfig()) -> list[ErrorExample]:
    """The errors of one image, located: the part rule of ``eval.metrics.matching`` applied to its overlaps (the counts
    equal ``match.splits`` / ``match.merges``), unmatched counted instances, and matched pairs' ECD errors."""
    ov = instance_overlaps(sample.true_ids, sample.pred_ids)
    ignored_true = np.isin(ov.true_ids, np.fromiter(sample.ignore_ids, np.int64, len(sample.ignore_ids)))
    inter, t_area, p_area = ov.pair_inter_px, ov.true_area_px[ov.pair_true], ov.pred_area_px[ov.pair_pred]
    c = match_config
    pred_part_of_true = (inter >= c.part_fraction * p_area) & (inter >= c.min_part_fraction * t_area)
    true_part_of_pred = (inter >= c.part_fraction * t_area) & (inter >= c.min_part_fraction * p_area)
    parts_per_true = np.bincount(ov.pair_true[pred_part_of_true], minlength=len(ov.true_ids))
    parts_per_pred = np.bincount(ov.pair_pred[true_part_of_pred], minlength=len(ov.pred_ids))
    # counted predictions: matched to a counted particle, or less than ignore_fraction inside ignore regions
    in_ignore = np.bincount(ov.pair_pred, weights=inter * ignored_true[ov.pair_true], minlength=len(ov.pred_ids))
    matched_pred = np.isin(ov.pred_ids, match.pair_pred_id)
    counted_pred = matched_pred | (in_ignore < c.ignore_fraction * ov.pred_area_px)
    out = []
    for k in np.flatnonzero((parts_per_true >= 2) & ~ignored_true):
        out.append(ErrorExample("split", image_index, float(parts_per_true[k]), int(ov.true_ids[k]), 0))
    for k in np.flatnonzero((parts_per_pred >= 2) & counted_pred):
        out.append(ErrorExample("merge", image_index, float(parts_per_pred[k]), 0, int(ov.pred_ids[k])))
    missed = ~ignored_true & ~np.isin(ov.true_ids, match.pair_true_id)
    for k in np.flatnonzero(missed):
        out.append(ErrorExample("miss", image_index, float(ov.true_area_px[k]), int(ov.true_ids[k]), 0))
    for k in np.flatnonzero(counted_pred & ~matched_pred):
        out.append(ErrorExample("false", image_index, float(ov.pred_area_px[k]), 0, int(ov.pred_ids[k])))
    rel = np.abs(match.pair_pred_ecd_nm / match.pair_true_ecd_nm - 1.0) if match.tp else np.zeros(0)
    for k in np.argsort(-rel)[:5]:
        out.append(ErrorExample("size", image_index, float(rel[k]), int(match.pair_true_id[k]),
                                int(match.pair_pred_id[k])))
    return out


def worst_examples(samples: Sequence, matches: Sequence, kind: str, n: int,
                   match_config: MatchConfig = MatchConfig()) -> list[ErrorExample]:
    found = [e for i, (s, m) in enumerate(zip(samples, matches, strict=True))
             for e in error_examples(s, m, i, match_config) if e.kind == kind]
    return sorted(found, key=lambda e: (-e.severity, e.image, e.true_id, e.pred_id))[:n]


def _box(labels: np.ndarray, ident: int) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(labels == ident)
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


def example_crop(image: np.ndarray, true_ids: np.ndarray, pred_ids: np.ndarray, ignore_ids, example: ErrorExample,
                 *, min_side_px: int = 48, display_px: int = 192) -> np.ndarray:
    """BGR crop around the example, at least ``min_side_px`` and 2.5 x its particle wide, shown at ``display_px``."""
    labels, ident = (true_ids, example.true_id) if example.true_id else (pred_ids, example.pred_id)
    y0, x0, y1, x1 = _box(labels, ident)
    side = int(min(max(min_side_px, 2.5 * max(y1 - y0, x1 - x0)), *image.shape))
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    top = int(np.clip(cy - side // 2, 0, image.shape[0] - side))
    left = int(np.clip(cx - side // 2, 0, image.shape[1] - side))
    win = (slice(top, top + side), slice(left, left + side))
    t, p = true_ids[win], pred_ids[win]
    ignored = np.isin(t, list(ignore_ids))
    bgr = cv2.cvtColor(np.clip(image[win] * 255, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    scale = max(display_px // side, 1)
    bgr = cv2.resize(bgr, (side * scale, side * scale), interpolation=cv2.INTER_NEAREST)

    def edges(ids: np.ndarray) -> np.ndarray:  # contours one display pixel wide
        return instance_boundaries(cv2.resize(ids.astype(np.int32), (side * scale, side * scale),
                                              interpolation=cv2.INTER_NEAREST))

    bgr[edges(np.where(ignored, t, 0))] = (220, 120, 0)
    bgr[edges(np.where(ignored, 0, t))] = (0, 200, 0)
    bgr[edges(p)] = (220, 0, 220)
    focus = (t == example.true_id) if example.true_id else (p == example.pred_id)
    bgr[edges(focus.astype(np.int32))] = (0, 230, 255)
    return bgr


# ----------------------------------------------------------------------------------------------- figures


def profile_figure(metrics: Mapping[str, dict]) -> bytes:
    """Left: each metric on real and synthetic images with its interval; right: the difference, its interval and
    the +-tolerance band (green: agrees, red: disagrees)."""
    names = [n for n in VALIDATED_METRICS if n in metrics]
    fig = Figure(figsize=(12.0, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(1.6, 1.0))
    x = np.arange(len(names))
    for offset, side in ((-0.2, "real"), (0.2, "synthetic")):
        v = np.array([_num(metrics[n][side]["value"]) for n in names])
        lo = np.array([_num(metrics[n][side]["ci_low"]) for n in names])
        hi = np.array([_num(metrics[n][side]["ci_high"]) for n in names])
        left.bar(x + offset, v, 0.4, color=COLOURS[side], label=side, alpha=0.85)
        left.errorbar(x + offset, v, yerr=[np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)], fmt="none",
                      ecolor="k", capsize=2, lw=0.8)
    left.axhline(0, color="k", lw=0.6)
    left.set_xticks(x, names, rotation=35, ha="right")
    left.set_title("error profile (95 % bootstrap intervals over images)")
    left.legend(frameon=False)
    d = np.array([_num(metrics[n]["difference"]["value"]) for n in names])
    lo = np.array([_num(metrics[n]["difference"]["ci_low"]) for n in names])
    hi = np.array([_num(metrics[n]["difference"]["ci_high"]) for n in names])
    tol = np.array([metrics[n]["tolerance"] for n in names])
    y = np.arange(len(names))[::-1]
    right.barh(y, 2 * tol, left=-tol, height=0.7, color="#e8f5e9", label="+- tolerance")
    colour = ["#2e7d32" if metrics[n]["verdict"] == "agrees" else "#c62828" for n in names]
    right.errorbar(d, y, xerr=[np.clip(d - lo, 0, None), np.clip(hi - d, 0, None)], fmt="none", ecolor="k",
                   capsize=2, lw=0.8)
    right.scatter(d, y, c=colour, zorder=3)
    right.axvline(0, color="k", lw=0.6)
    right.set_yticks(y, names)
    right.set_title("real - synthetic")
    return png_bytes(fig)


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def sweep_figure(sweep: Mapping, metrics: Sequence[str] = ("F1", "D50_rel_err")) -> bytes | None:
    """Per post-hoc factor and metric: real and synthetic values vs level (nominal included) with intervals,
    disagreeing levels ringed in red."""
    factors = [f for f in sweep["post_hoc_factors"]
               if any(lv["factor"] == f and lv["testable"] for lv in sweep["levels"])]
    if not factors:
        return None
    fig = Figure(figsize=(4.4 * len(metrics), 3.2 * len(factors) + 0.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(factors), len(metrics), squeeze=False))
    for i, factor in enumerate(factors):
        levels = [lv for lv in sweep["levels"] if lv["factor"] == factor and lv["testable"]]
        nominal = levels[0]["nominal"]
        points = sorted([(nominal, sweep["nominal"]["metrics"])] + [(lv["level"], lv["metrics"]) for lv in levels],
                        key=lambda t: t[0])
        xs = np.array([p[0] for p in points])
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            for side, shift in (("real", 0.985), ("synthetic", 1.015)):
                v = np.array([_num(p[1][metric][side]["value"]) for p in points])
                lo = np.array([_num(p[1][metric][side]["ci_low"]) for p in points])
                hi = np.array([_num(p[1][metric][side]["ci_high"]) for p in points])
                ax.errorbar(xs * shift, v, yerr=[np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)], marker="o",
                            color=COLOURS[side], label=side, capsize=2, lw=1.2)
            bad = [p[0] for p in points if p[1][metric]["verdict"] == "disagrees"]
            for x in bad:
                ax.axvline(x, color="#c62828", lw=0.8, ls=":")
            ax.axvline(nominal, color="k", lw=0.6, ls="--")
            if xs.max() / max(xs.min(), 1e-12) >= 20:
                ax.set_xscale("log")
            ax.set_xlabel(axis_label(factor))
            ax.set_ylabel(metric)
            if i == 0 and j == 0:
                ax.legend(frameon=False, fontsize=8)
    fig.suptitle("real (degraded post hoc) vs synthetic (simulated at the level); dashed: nominal, "
                 "red dotted: disagrees", fontsize=9)
    return png_bytes(fig)


# ------------------------------------------------------------------------------------------------ tables


def _verdict_cell(verdict: str) -> str:
    colour = {"agrees": "#2e7d32", "disagrees": "#c62828"}.get(verdict, "#757575")
    return f"<td style='color:{colour}'><b>{html.escape(verdict)}</b></td>"


def _ci(d: Mapping) -> str:
    return f"{fmt(d['value'], 3)} [{fmt(d['ci_low'], 3)}, {fmt(d['ci_high'], 3)}]"


def verdict_table(metrics: Mapping[str, dict]) -> str:
    rows = "".join(
        f"<tr><td><b>{name}</b></td><td class=num>{_ci(m['real'])}</td><td class=num>{_ci(m['synthetic'])}</td>"
        f"<td class=num>{_ci(m['difference'])}</td><td class=num>{m['tolerance']:g}</td>{_verdict_cell(m['verdict'])}"
        f"<td>{html.escape(m['interval'])}</td><td class=small>{html.escape(METRIC_MEANINGS[name])}</td></tr>"
        for name, m in metrics.items()
    )
    return ("<table><tr><th>metric</th><th>real</th><th>synthetic</th><th>real - synthetic</th><th>tolerance</th>"
            f"<th>verdict</th><th>interval vs tolerance</th><th>meaning</th></tr>{rows}</table>")


def sweep_table(sweep: Mapping) -> str:
    head = "".join(f"<th>{n}: real - synthetic</th>" for n in VALIDATED_METRICS)
    rows = []
    for lv in sweep["levels"]:
        name = f"{html.escape(lv['factor'])} = {lv['level']:g} <span class=small>(nominal {lv['nominal']:g})</span>"
        if not lv["testable"]:
            rows.append(f"<tr><td>{name}</td><td colspan={len(VALIDATED_METRICS)} class=small>"
                        f"{html.escape(lv['reason'])}</td></tr>")
            continue
        cells = "".join(
            f"<td class=num style='color:{'#c62828' if m['verdict'] == 'disagrees' else '#222'}'>"
            f"{fmt(m['difference']['value'], 3)} [{fmt(m['difference']['ci_low'], 3)}, "
            f"{fmt(m['difference']['ci_high'], 3)}]</td>" for m in lv["metrics"].values())
        rows.append(f"<tr><td>{name}</td>{cells}</tr>")
        if lv.get("note"):
            rows.append(f"<tr><td></td><td colspan={len(VALIDATED_METRICS)} class=small>Note: "
                        f"{html.escape(lv['note'])}</td></tr>")
    return f"<table><tr><th>level</th>{head}</tr>{''.join(rows)}</table>"


def text_table(result: Mapping) -> str:
    """One screen: the verdict per metric, then one line per sweep level."""
    lines = [f"{'metric':<13}{'real':>9}{'synth':>9}{'real-synth':>11}  {'95 % interval':<20}{'tol':>5}  verdict",
             "-" * 78]
    for name, m in result["metrics"].items():
        d = m["difference"]
        interval = f"[{fmt(d['ci_low'], 3)}, {fmt(d['ci_high'], 3)}]"
        lines.append(f"{name:<13}{fmt(m['real']['value'], 3):>9}{fmt(m['synthetic']['value'], 3):>9}"
                     f"{fmt(d['value'], 3):>11}  {interval:<20}{m['tolerance']:>5g}  {m['verdict']}")
    v = result["verdict"]
    if result["real"]["counting"] != result["synthetic"]["counting"]:
        lines.append(f"warning: the sides count different particles: real {result['real']['counting']}; "
                     f"synthetic {result['synthetic']['counting']}")
    lines.append(f"agrees on {len(v['agrees'])} of {len(result['metrics'])} metrics"
                 + (f"; disagrees on {', '.join(v['disagrees'])}" if v["disagrees"] else "")
                 + (f"; undefined: {', '.join(v['undefined'])}" if v["undefined"] else ""))
    sweep = result.get("sweep")
    if sweep:
        lines.append("sweep (real degraded post hoc vs simulated), F1 and D50_rel_err differences:")
        for lv in sweep["levels"]:
            label = f"  {lv['factor']}={lv['level']:g}"
            if not lv["testable"]:
                lines.append(f"{label:<36} {lv['reason'].split(':')[0]}")
                continue
            parts = [f"{k} {fmt(lv['metrics'][k]['difference']['value'], 3)} ({lv['metrics'][k]['verdict']})"
                     for k in ("F1", "D50_rel_err")]
            lines.append(f"{label:<36} {'; '.join(parts)}")
        if sweep["synthetic_only"]:
            lines.append(f"  synthetic only (not applicable to acquired images): {', '.join(sweep['synthetic_only'])}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the page


def _gallery(side_name: str, side, kind: str, n: int, match_config: MatchConfig) -> str:
    from eval.validate.validate import samples_of

    samples = samples_of(side.predicted)
    matches = [r.match for r in side.records]
    figures = []
    for e in worst_examples(samples, matches, kind, n, match_config):
        p = side.predicted[e.image]
        crop = example_crop(p.labelled.image, p.labelled.true_ids, p.pred_ids, p.labelled.ignore_ids, e)
        figures.append(f"<figure><img src='{jpeg_uri(crop)}' width=192><figcaption class=small>"
                       f"{html.escape(side_name)}: {html.escape(str(p.labelled.info['file_name']))}, "
                       f"{kind} {e.severity:.3g}</figcaption></figure>")
    if not figures:
        return f"<p class=small>{html.escape(side_name)}: no {kind} errors.</p>"
    return "<div class=gallery>" + "".join(figures) + "</div>"


def error_sections(result: Mapping, real_side, syn_side, cfg) -> str:
    kinds = list(dict.fromkeys(k for name in result["verdict"]["disagrees"] for k in METRIC_ERRORS[name]))
    if not kinds:
        return "<p>No metric disagrees: no error type to show.</p>"
    match_config = MatchConfig(iou_threshold=cfg.iou_threshold)
    parts = []
    for kind in kinds:
        why = [n for n in result["verdict"]["disagrees"] if kind in METRIC_ERRORS[n]]
        parts.append(f"<h3>{kind}: {html.escape(ERROR_MEANINGS[kind])}</h3><p class=small>behind "
                     f"{html.escape(', '.join(why))}</p>")
        parts.append(_gallery("real", real_side, kind, cfg.n_crops, match_config))
        parts.append(_gallery("synthetic", syn_side, kind, cfg.n_crops, match_config))
    return "".join(parts)


def validation_html(result: Mapping, real_side, syn_side, sweep_sides: Mapping, cfg) -> str:
    """validation.html: self-contained (figures and crops embedded)."""
    model = result["model"]
    real, syn = result["real"], result["synthetic"]
    v = result["verdict"]
    source = f" (config {syn['config_file']}, seed {syn['seed']})" if syn["config_file"] else ""
    body = [
        f"<h1>Bench validation of <code>{html.escape(model['spec'])}</code></h1>",
        f"<p>Real: <code>{html.escape(real['dataset'])}</code>, {real['counts']['images']} images, "
        f"{real['counts']['n_true']} counted particles. Synthetic: <code>{html.escape(syn['dataset'])}</code>"
        f"{html.escape(source)}"
        f", {syn['counts']['images']} images, {syn['counts']['n_true']} counted particles. Counted on the real side: "
        f"{html.escape(real['counting'])}; on the synthetic side: {html.escape(syn['counting'])}"
        f"{' (<b>not the same particles</b>)' if real['counting'] != syn['counting'] else ''}; the others are "
        "ignore regions. "
        f"Intervals: {cfg.confidence:.0%} percentile bootstrap, real and synthetic images resampled independently "
        f"by image ({cfg.n_resamples} resamples, seed {cfg.seed}).</p>",
        f"<p><b>Agrees on {len(v['agrees'])} of {len(result['metrics'])} metrics</b>"
        + (f"; disagrees on {html.escape(', '.join(v['disagrees']))}" if v["disagrees"] else "")
        + (f"; undefined: {html.escape(', '.join(v['undefined']))}" if v["undefined"] else "") + ".</p>",
        "<h2>Verdicts</h2><p class=small>agrees: |real - synthetic| &le; tolerance. Interval vs tolerance: "
        "<i>inside</i>, the whole interval lies within the tolerance (agreement shown); <i>outside</i>, wholly "
        "beyond (disagreement shown); <i>straddles</i>, more images would be needed to decide.</p>",
        verdict_table(result["metrics"]),
        "<h2>Error profiles</h2>", f"<img src='{data_uri(profile_figure(result['metrics']))}'>",
    ]
    sweep = result.get("sweep")
    if sweep:
        body.append(f"<h2>Along the sweep <code>{html.escape(sweep['file'])}</code></h2><p>Real images degraded "
                    "post hoc (docs/evaluation.md: blur by convolution, dose by added noise at each image's "
                    "measured gain, pixel size by point sampling); synthetic images simulated at the level with "
                    "the same seeds. Synthetic only (cannot be applied to acquired images): "
                    f"{html.escape(', '.join(sweep['synthetic_only']) or 'none')}.</p>")
        figure = sweep_figure(sweep)
        if figure is not None:
            body.append(f"<img src='{data_uri(figure)}'>")
        body.append(sweep_table(sweep))
    body.append("<h2>Examples of the disagreeing error types</h2><p class=small>True contours green, predicted "
                "magenta, ignored true particles blue, the example's particle yellow.</p>")
    body.append(error_sections(result, real_side, syn_side, cfg))
    prov = {k: result[k] for k in ("model", "settings", "tolerances", "provenance", "timing")}
    body.append(f"<h2>Provenance</h2><pre>{html.escape(json.dumps(prov, indent=1, default=str))}</pre>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>semsynth validation: "
            f"{html.escape(model['spec'])}</title><style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")
