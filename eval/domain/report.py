"""Report page of ``domain check``: scatter matrix of the training images' factors, the validated range
limits (in measured units), and the checked images coloured by verdict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from eval.domain.check import LevelMap, Range
from eval.domain.model import TRANSFORMS, DomainModel, inverse

COLOURS = {"inside": "tab:green", "atypical": "tab:orange", "untested": "tab:purple", "outside": "tab:red"}


def scatter_matrix(model: DomainModel, results: Sequence[Mapping], ranges: Sequence[Range],
                   maps: Mapping[str, LevelMap], out_png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    names = list(model.names)
    k = len(names)
    train = {n: inverse(n, model.train[:, j]) for j, n in enumerate(names)}
    limits: dict[str, list[tuple[float, str]]] = {}
    for rng in ranges:
        m = maps.get(rng.key)
        if m is None or m.factor not in names:
            continue
        for level in (rng.range_lo, rng.range_hi):
            if level is not None:
                limits.setdefault(m.factor, []).append((m.measured_at(level), f"{rng.key} {level:g}"))
    fig, axes = plt.subplots(k, k, figsize=(2.3 * k, 2.3 * k), squeeze=False)
    for i, yi in enumerate(names):
        for j, xj in enumerate(names):
            ax = axes[i, j]
            if i == j:
                ax.hist(train[xj], bins=12, color="0.6")
            else:
                ax.scatter(train[xj], train[yi], s=10, c="0.4", label="training")
                for res in results:
                    fx, fy = res["factors"].get(xj), res["factors"].get(yi)
                    if fx is not None and fy is not None:
                        ax.scatter([fx], [fy], s=22, marker="x", c=COLOURS[res["verdict"]])
                for value, _ in limits.get(yi, []):
                    ax.axhline(value, color="tab:blue", lw=0.8, ls="--")
            for value, _ in limits.get(xj, []):
                ax.axvline(value, color="tab:blue", lw=0.8, ls="--")
            if TRANSFORMS[xj] == "log":
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
                ax.xaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
            if i != j and TRANSFORMS[yi] == "log":
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
                ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
            if i == k - 1:
                ax.set_xlabel(xj, fontsize=8)
            if j == 0:
                ax.set_ylabel(yi, fontsize=8)
            ax.tick_params(labelsize=6)
    handles = [plt.Line2D([], [], marker="x", ls="", color=c, label=v) for v, c in COLOURS.items()]
    handles.append(plt.Line2D([], [], color="tab:blue", ls="--", label="validated range limit"))
    fig.legend(handles=handles, loc="upper right", fontsize=8)
    fig.suptitle(f"training images (n = {model.n}) and checked images", fontsize=10)
    fig.tight_layout()
    tmp = out_png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out_png)
    return out_png


def markdown(results: Sequence[Mapping], model: DomainModel, ranges: Sequence[Range]) -> str:
    counts = {v: sum(r["verdict"] == v for r in results) for v in COLOURS}
    lines = [f"# Domain check: {len(results)} images", "",
             f"Training images: {model.n}; factors {', '.join(model.names)}"
             + (f"; fixed: {', '.join(f'{k} = {v:g}' for k, v in model.fixed.items())}" if model.fixed else ""),
             f"Validated ranges: {', '.join(r.key for r in ranges) or 'none given'}", "",
             "Verdicts: " + ", ".join(f"{v} {n}" for v, n in counts.items()), "",
             "| image | verdict | p (typicality) | reasons |", "|---|---|---|---|"]
    for r in results:
        p = r["typicality"]["p_value"]
        lines.append(f"| {r['image']} | {r['verdict']} | {p:.2g} | {'; '.join(r['reasons'])} |"
                     if p == p else f"| {r['image']} | {r['verdict']} | - | {'; '.join(r['reasons'])} |")
    lines += ["", "![scatter matrix](domain_check.png)", ""]
    return "\n".join(lines)
