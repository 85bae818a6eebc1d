"""Self-contained HTML reports (figures embedded as base64 PNG): one file an auditor can open anywhere."""

from __future__ import annotations

import html
import json
import math

import cv2
import numpy as np

from eval.metrics.matching import ImageSample, MatchConfig, match_image
from eval.metrics.meanings import METRIC_MEANINGS
from eval.report.plots import data_uri, psd_figure
from simulator.preview import instance_boundaries

STYLE = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:1.5em auto;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:0.6em 0}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}
.small{font-size:0.85em;color:#555}.gallery{display:flex;flex-wrap:wrap;gap:10px}.gallery figure{margin:0}
code{background:#f5f5f5;padding:0 3px}pre{white-space:pre-wrap;word-break:break-all;font-size:0.8em}"""


def fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return html.escape(str(value))


def jpeg_uri(bgr: np.ndarray, quality: int = 90) -> str:
    """Photographic crops (noisy SEM texture) compress ~6x better as JPEG; the contours stay legible."""
    import base64

    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode()


def metrics_table(metrics: dict, confidence: float) -> str:
    rows = "".join(
        f"<tr><td><b>{name}</b></td><td class=num>{fmt(m['value'])}</td>"
        f"<td class=num>[{fmt(m['ci_low'])}, {fmt(m['ci_high'])}]</td>"
        f"<td class=small>{html.escape(METRIC_MEANINGS.get(name, ''))}</td></tr>"
        for name, m in metrics.items()
    )
    return (f"<table><tr><th>metric</th><th>value</th><th>{confidence:.0%} interval</th><th>meaning</th></tr>"
            f"{rows}</table>")


def error_crop(image: np.ndarray, true_ids: np.ndarray, pred_ids: np.ndarray, match, ignore_ids,
               side_px: int = 256) -> np.ndarray:
    """BGR crop (the window with most unmatched-particle pixels): true contours green, predicted magenta,
    ignored true particles blue."""
    t_unmatched = (true_ids > 0) & ~np.isin(true_ids, match.pair_true_id) & ~np.isin(true_ids, list(ignore_ids))
    p_unmatched = (pred_ids > 0) & ~np.isin(pred_ids, match.pair_pred_id)
    errors = (t_unmatched | p_unmatched).astype(np.float32)
    h, w = image.shape
    side = min(side_px, h, w)
    density = cv2.boxFilter(errors, -1, (side, side), normalize=False, borderType=cv2.BORDER_CONSTANT)
    half = side // 2
    valid = density[half : h - side + half + 1, half : w - side + half + 1]
    y, x = np.unravel_index(int(np.argmax(valid)), valid.shape)
    win = (slice(y, y + side), slice(x, x + side))
    bgr = cv2.cvtColor(np.clip(image[win] * 255, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    bgr[instance_boundaries(np.where(np.isin(true_ids[win], list(ignore_ids)), true_ids[win], 0))] = (220, 120, 0)
    bgr[instance_boundaries(np.where(np.isin(true_ids[win], list(ignore_ids)), 0, true_ids[win]))] = (0, 200, 0)
    bgr[instance_boundaries(pred_ids[win])] = (220, 0, 220)
    return bgr


def worst_gallery(predicted, matches, rows: list[dict], n: int = 4) -> str:
    order = sorted(range(len(rows)), key=lambda i: (np.nan_to_num(rows[i]["PQ"], nan=-1.0), i))[:n]
    figures = []
    for i in order:
        p = predicted[i]
        crop = error_crop(p.labelled.image, p.labelled.true_ids, p.pred_ids, matches[i], p.labelled.ignore_ids)
        r = rows[i]
        figures.append(
            f"<figure><img src='{jpeg_uri(crop)}' width=384 style='image-rendering:pixelated'><figcaption class=small>"
            f"{html.escape(r['file_name'])}: PQ {fmt(r['PQ'], 3)}, TP {r['tp']}, FP {r['fp']}, FN {r['fn']}, "
            f"splits {r['splits']}, merges {r['merges']}</figcaption></figure>"
        )
    return "<div class=gallery>" + "".join(figures) + "</div>"


def evaluation_report(result: dict, predicted, cfg) -> str:
    """report.html of ``cli.py evaluate``."""
    prov = result["provenance"]
    metrics, rows, counts = result["metrics"], result["images"], result["counts"]
    matches = [_match(p, cfg) for p in predicted]
    true_d = np.concatenate([m.true_ecd_nm for m in matches] or [np.zeros(0)])
    pred_d = np.concatenate([m.pred_ecd_nm for m in matches] or [np.zeros(0)])
    psd = (f"<img src='{data_uri(psd_figure(true_d, pred_d))}'>" if true_d.size and pred_d.size
           else "<p>No counted particles on one side: no size distribution to compare.</p>")
    image_rows = "".join(
        "<tr>" + "".join(f"<td class=num>{fmt(r.get(k), 3)}</td>" for k in _ROW_KEYS) + "</tr>" for r in rows
    )
    timing = result["timing"]
    spec = html.escape(prov["model"]["spec"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>semsynth evaluation: {spec}</title>
<style>{STYLE}</style></head><body>
<h1>Evaluation of <code>{html.escape(prov['model']['spec'])}</code></h1>
<p>{len(rows)} images of <code>{html.escape(prov['dataset'])}</code>; {counts['n_true']} counted true particles,
{counts['n_pred']} counted predictions ({counts['n_true_ignored']} true particles ignored: cut by the border or hidden
beyond an occluded fraction of {cfg.max_occluded_fraction}). Intervals: {cfg.confidence:.0%} percentile bootstrap over
images ({cfg.n_resamples} resamples, seed {cfg.seed}). Inference {timing['inference_s_per_image']:.3f} s per image;
metrics {timing['metrics_s']:.1f} s.</p>
<h2>Metrics</h2>{metrics_table(metrics, cfg.confidence)}
<h2>Particle size distribution (ECD of counted particles)</h2>{psd}
<h2>Worst images (by PQ)</h2>
<p class=small>Crop with the most unmatched particles, at 1.5x: true contours green, predicted magenta, ignored true
particles blue.</p>{worst_gallery(predicted, matches, rows)}
<h2>Per image</h2><table><tr>{''.join(f'<th>{k}</th>' for k in _ROW_KEYS)}</tr>{image_rows}</table>
<h2>Provenance</h2><pre>{html.escape(json.dumps(prov, indent=1, default=str))}</pre>
</body></html>
"""


_ROW_KEYS = ("file_name", "n_true", "n_pred", "tp", "fp", "fn", "splits", "merges", "PQ", "DSC", "AP50",
             "D50_true_nm", "D50_pred_nm", "inference_s")


def _match(p, cfg):
    pixel_nm = float(p.labelled.info["pixel_size_nm"])
    return match_image(ImageSample(p.labelled.true_ids, p.pred_ids, pixel_nm, p.scores, p.labelled.ignore_ids),
                       MatchConfig(iou_threshold=cfg.iou_threshold))


def _ranges_section(stats: dict) -> str:
    parts = []
    for factor, r in stats["ranges"].items():
        rows = "".join(
            f"<tr><td class=num>{'<b>' if lv.is_nominal else ''}{lv.level:.4g}{'</b>' if lv.is_nominal else ''}</td>"
            f"<td class=num>{lv.count.k}/{lv.count.n}</td><td class=num>{fmt(lv.count.p_hat, 3)}</td>"
            f"<td class=num>[{fmt(lv.count.low, 3)}, {fmt(lv.count.high, 3)}]</td><td>{lv.count.status}"
            f"{'' if lv.count.images_more is None else f' (~{lv.count.images_more} more images)'}</td></tr>"
            for lv in r.levels
        )
        parts.append(
            f"<h3>{html.escape(factor)}{f' [{html.escape(r.unit)}]' if r.unit else ''}</h3>"
            f"<p>{html.escape(r.statement)}</p><table><tr><th>level</th><th>pass</th><th>p&#770;</th>"
            f"<th>Clopper-Pearson</th><th>status</th></tr>{rows}</table>"
        )
    return "".join(parts)


def _robustness_table(table) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(f.factor)}</td><td class=num>{', '.join(f'{v:.3g}' for v in f.levels)}</td>"
        f"<td class=num>{', '.join(fmt(v, 3) for v in f.level_means)}</td><td class=num>{fmt(f.mpc, 3)}</td>"
        f"<td class=num>{fmt(f.rpc, 3)}</td></tr>" for f in table.factors
    )
    return (f"<p>Metric {table.metric} (mean per image); clean (nominal point, {table.n_clean} images): "
            f"{fmt(table.clean, 3)}. Overall mPC {fmt(table.mpc, 3)}, rPC {fmt(table.rpc, 3)} "
            f"(Michaelis et al. 2019, over the swept factors instead of generic corruptions).</p>"
            f"<table><tr><th>factor</th><th>levels</th><th>mean {table.metric}</th><th>mPC</th><th>rPC</th></tr>"
            f"{rows}</table>")


def _factors_text(factors: dict) -> str:
    return ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in factors.items())


def _points_table(points: list[dict]) -> str:
    keys = ("AP50", "PQ", "F1", "D50_rel_err")
    head = "".join(f"<th>{k} [95 % CI]</th>" for k in keys)
    rows = "".join(
        f"<tr><td>{p['point_id']}</td><td class=small>{html.escape(_factors_text(p['factors']))}</td>"
        f"<td class=num>{p['n_images']}</td>"
        + "".join(f"<td class=num>{fmt(p['metrics'][k]['value'], 3)} [{fmt(p['metrics'][k]['ci_low'], 3)}, "
                  f"{fmt(p['metrics'][k]['ci_high'], 3)}]</td>" for k in keys) + "</tr>"
        for p in points
    )
    return f"<table><tr><th>point</th><th>factors</th><th>images</th>{head}</tr>{rows}</table>"


def robustness_report(result: dict, stats: dict, predicted, overall: dict, cfg) -> str:
    """report.html of ``cli.py robustness``."""
    from eval.report import plots

    crit = cfg.criterion
    prov = result["provenance"]
    sweep = result["sweep"]
    body = []
    if "ranges" in stats:
        body.append("<h2>Operating ranges</h2><p>A level is <i>in</i> the operating range when the Clopper-Pearson "
                    f"lower bound of P(pass) is at least {crit.target:g}; <i>out</i> when the upper bound is below "
                    "it; <i>undecided</i> otherwise. Statements cover the tested levels only: nothing is claimed "
                    "beyond them, and boundaries are given as brackets between tested levels.</p>")
        figure = plots.curves_figure(stats["curves"][crit.measurand], ranges=stats["ranges"], criterion=crit,
                                     title=f"{crit.measurand} per image vs factor level")
        body.append(f"<img src='{plots.data_uri(figure)}'>")
        body.append(f"<img src='{plots.data_uri(plots.pass_probability_figure(stats['ranges']))}'>")
        body.append(_ranges_section(stats))
        body.append("<h2>Robustness (mPC / rPC)</h2>" + _robustness_table(stats["robustness"]))
        for m in ("F1", "PQ"):
            figure = plots.curves_figure(stats["curves"][m], title=f"{m} per image vs factor level")
            body.append(f"<img src='{plots.data_uri(figure)}'>")
    else:
        body.append("<h2>Pass probability over the design</h2><p>Space-filling design: pass probabilities per factor "
                    "bin (other factors marginalised) and per pair of factors, each with its counts; sensitivity "
                    "indices from the same sample.</p>")
        body.append(f"<img src='{plots.data_uri(plots.marginal_pass_figure(stats['marginals'], crit))}'>")
        body.append(f"<img src='{plots.data_uri(plots.pass_map_figure(stats['maps']))}'>")
        if stats["sensitivity"]:
            body.append(f"<img src='{plots.data_uri(plots.sensitivity_figure(stats['sensitivity']))}'>")
        for note in stats["sensitivity_skipped"]:
            body.append(f"<p class=small>Sensitivity not computed for {html.escape(note)}</p>")
        for s in stats["sensitivity"]:
            body.append(f"<p class=small>{html.escape(s.method)} on {html.escape(s.metric)}: "
                        f"{html.escape(s.note)}</p>")
    body.append("<h2>Metrics per sweep point</h2>" + _points_table(result["points"]))
    body.append(f"<h2>All images pooled</h2>{metrics_table(overall['metrics'], cfg.evaluate.confidence)}")
    matches = [_match(p, cfg.evaluate) for p in predicted]
    body.append("<h2>Worst images (by PQ)</h2><p class=small>True contours green, predicted magenta, ignored "
                "true particles blue.</p>" + worst_gallery(predicted, matches, overall["images"]))
    timing = result["timing"]
    spec = html.escape(prov["model"]["spec"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>semsynth robustness: {spec}</title>
<style>{STYLE}</style></head><body>
<h1>Robustness of <code>{html.escape(prov['model']['spec'])}</code></h1>
<p>Sweep <code>{html.escape(sweep['file'])}</code> ({sweep['mode']}, {sweep['n_images']} images,
{sweep['images_per_point']} per point; factors {html.escape(json.dumps(sweep['factors']))}).
Criterion: {html.escape(crit.describe())}. Timing: simulate {timing['simulate_s']:.0f} s, segment
{timing['segment_s']:.0f} s, metrics {timing['metrics_s']:.0f} s.</p>
{''.join(body)}
<h2>Bench validation</h2>{_validation_section(result.get("validation"))}
<h2>Provenance</h2><pre>{html.escape(json.dumps(prov, indent=1, default=str))}</pre>
</body></html>
"""


def _validation_section(record: dict | None) -> str:
    """Whether (and against what) the simulated bench was validated on real images (``cli.py validate``)."""
    if not record:
        return ("<p>Not validated: nothing shows that this model fails the same way on real images (run "
                "<code>cli.py validate</code> and pass its result with <code>--validation</code>).</p>")
    v = record["verdict"]
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td class=num>{fmt(m['difference']['value'], 3)}</td>"
                   f"<td class=num>{m['tolerance']:g}</td><td>{html.escape(m['verdict'])}</td></tr>"
                   for name, m in record["metrics"].items())
    notes = []
    if record.get("same_model") is False:
        notes.append(f"validated with another model ({html.escape(str(record['model']))})")
    if record.get("config_differences"):
        notes.append("the validated config differs from this sweep's nominal config in "
                     + html.escape(", ".join(record["config_differences"])))
    return (f"<p><code>{html.escape(record['file'])}</code>: real images <code>"
            f"{html.escape(str(record['real_dataset']))}</code> against <code>"
            f"{html.escape(str(record['synthetic_config_file'] or record['synthetic_dataset']))}</code>, model "
            f"<code>{html.escape(str(record['model']))}</code>, class {html.escape(str(record['measured_class']))}: "
            f"agrees on {len(v['agrees'])} of {len(record['metrics'])} metrics"
            + (f", disagrees on {html.escape(', '.join(v['disagrees']))}" if v["disagrees"] else "") + ".</p>"
            + "".join(f"<p class=small>Note: {n}.</p>" for n in notes)
            + f"<table><tr><th>metric</th><th>real - synthetic</th><th>tolerance</th><th>verdict</th></tr>{rows}"
              "</table>")
