"""Operating ranges of a model over a simulated sweep: ``run`` (simulate, segment, score) -> ``rows`` (one result
row per image, the pass criterion) -> ``binomial`` (Clopper-Pearson) -> ``ranges`` (in / out / undecided per level),
``tables`` (COCO-C curves and tables), ``designs`` (SALib sensitivity)."""
