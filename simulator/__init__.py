"""Labelled SEM images of TiO2 nanoparticles, simulated stage by stage.

The data flow, one module per stage, composed only by ``pipeline.simulate_image`` (which spawns one RNG stream
per stage and image from ``SeedSequence(seed).spawn``):

    config (TOML -> frozen dataclasses; sweep expands a [sweep] table)
    geometry/   particles (primaries) -> aggregate (clusters) -> scene (placement on the substrate, nm)
    instrument/scan       beam offsets that displace the rays (labels stay exact)
    render      z-buffer: instance ids, height, normals, amodal masks
    specimen    substrate texture and residue rims
    shading     SE yield per pixel (tilt, material, edges, occlusion, collection)
    instrument/probe, instrument/charging   probe blur, charging halos and streaks
    detector    dose, noise, gain and ADC; the info bar
    io/         records (RLE, COCO) -> writer (the job runner, the only writer) ; reader (the only reader) ; check

``preview`` draws contact sheets for people.
"""
