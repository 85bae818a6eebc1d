"""Real SEM data and pixels: ``reference`` reads SEM files (TIFF/PNG, masks, pixel size); ``ingest`` converts them
into the dataset layout that ``simulate`` writes; ``pixels`` holds the one resampler and the one percentile
normaliser. (Dataset folders are read by ``simulator.io.reader``, the info bar included.)"""
