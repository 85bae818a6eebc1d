"""Uncertainty budget of one model's measurement of one measurand (issue 23), e.g. the D50 in nm.

The flow: K models per source of variation -> tables of measurements -> ``budget`` (variance components by
method of moments, each with a 95 % interval) -> combined and expanded uncertainty.

    budget   pure statistics: the random-effects decomposition, intervals, Welch-Satterthwaite degrees of
             freedom, resampling by image, and the 1/n reading "how many training images halve it"

Not built yet: the orchestration that trains and evaluates the K models (``cli.py uncertainty``).
See docs/uncertainty.md.
"""
