"""Operating domain: where a model's training images lie in influence-factor space (``model``: a Gaussian copula
of the per-image factors of ``eval.factors``), whether a new image is inside it and inside the operating ranges
of a robustness run (``check``), and a report page (``report``). Entry points: ``cli.py domain fit|check|sample``.
"""
