"""Realism of simulated images against real ones: ``data`` (image sets at one pixel size, levels, crops) ->
``nets`` (crop classifier, denoising autoencoder) -> ``c2st`` and ``kid`` -> ``report`` (distances, plot, HTML);
``config`` holds the settings."""
