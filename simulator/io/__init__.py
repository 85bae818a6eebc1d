"""Dataset input and output: ``records`` (one schema: RLE masks, COCO records), ``files`` (atomic writes, PNG,
versions), ``writer`` (runs the jobs and writes a dataset), ``reader`` (the only dataset reader), ``check``."""
