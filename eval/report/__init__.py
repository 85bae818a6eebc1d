"""HTML reports (``report``) and their figures (``plots``)."""
