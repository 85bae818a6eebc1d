"""Metrics of a prediction against the truth: ``matching`` (instance matching, ignore regions, PQ, splits and
merges) -> ``coco`` (AP through COCOeval) -> ``psd`` (particle size distributions) -> ``bootstrap`` (intervals over
images)."""
