"""The microscope around the render: ``scan`` displaces the rays before it (so labels stay exact); ``probe``
blurs and ``charging`` adds halos and streaks to the SE signal after shading."""
