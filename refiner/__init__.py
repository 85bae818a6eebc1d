"""Label-preserving sim-to-real refiner: learns from unlabelled real SEM images what the simulator misses and
applies it to synthetic images without invalidating their labels.

    data (datasets -> unpaired crops) -> nets (generator, discriminator) -> losses -> train (run folder)
    -> fidelity (does a refined image still match its labels?) -> apply (refined dataset, labels copied)

Entry points: ``refiner.train.train`` and ``refiner.apply.apply``.
"""
