"""Calibration: ``image_stats`` measures images and particles, ``fit`` adjusts simulator parameters until the
statistics of simulated images match real ones, ``compare`` puts real and synthetic side by side."""
