"""Paired, residual appearance model p(image | labels): learns from labelled real images what the physics render
of their labels misses, and draws images for simulated labels.

    labels -> inputs (separations, height dome, simulator shading + probe blur, label buffers) -> nets (residual
    generator: render + bounded correction; PatchGAN / VAE encoder) -> train (run folder, fidelity gate per
    checkpoint) -> apply (dataset of generated images, annotations and labels copied byte for byte)

Two families share inputs, generator and apply path: ``gan`` (adversarial + feature matching + low-frequency L1,
DiffAugment, R1) and ``vae`` (conditional VAE over the residual, Gaussian likelihood). Importing this package
imports no simulator stage: the physics render (``inputs.physics_render``) imports the shading stage lazily, so
training from prepared arrays needs only torch, numpy, scipy and OpenCV.
"""
