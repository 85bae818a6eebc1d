"""Evaluation against simulated and real data.

    data/        real SEM files (reference) and ingest into the dataset layout; pixels (one resampler, one
                 percentile normaliser); datasets themselves are read by simulator.io.reader, the only reader
    calibrate/   image statistics -> fit simulator parameters to real images -> compare real and synthetic
    realism/     how distinguishable two image sets are: data -> nets -> C2ST, KID -> report
    segment/     models behind one interface (watershed, U-Net, predictions files, plug-ins), chosen by a spec
    metrics/     matching -> COCO AP -> particle size distributions -> bootstrap over images
    evaluate     a model on a dataset: metrics.json, per_image.csv, report.html
    robustness/  a model over a simulated sweep: rows -> binomial bounds -> operating ranges, tables, designs
    validate/    bench validity: a model's errors on real vs synthetic images (degrade -> compare -> sweep -> report)
    uncertainty/ budget of one measurand: variance components (training set, retraining, input noise, test
                 sampling) with intervals -> combined and expanded uncertainty (orchestration not built yet)
    report/      HTML reports and their plots
    training     the training skeleton of every network (device, seeded streams, checkpoints, resume)
    jsonable     results as plain JSON types

Import submodules by name (``from eval.metrics.coco import ...``): a bare ``import eval`` shadows the builtin.
"""
