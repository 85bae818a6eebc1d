"""Bench validity: does a model fail the same way on the simulator's images as on real ones? (``cli.py validate``)

degrade (post-hoc instrument changes applied to acquired images) -> compare (metrics on both sides, two-sample
bootstrap over images, verdicts) -> sweep (the same comparison along post-hoc-testable sweep levels) ->
report (validation.html, the text table) ; ``validate.validate`` composes them and writes the files.
"""
