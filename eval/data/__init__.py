"""Real SEM data: ``reference`` reads SEM files (TIFF/PNG, masks, pixel size, info bar); ``ingest`` converts them
into the dataset layout that ``simulate`` writes."""
