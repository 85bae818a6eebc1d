"""Geometry in nm: primary particles (``particles``), their aggregates (``aggregate``), and the scene that
places aggregates on the substrate (``scene``)."""
