"""Segmentation models behind one interface (``interface``: ``model(image, pixel_size_nm) -> Prediction``):
``watershed``, ``unet`` (training and inference), ``predictions`` (COCO results files), ``plugin`` (a Python
callable); ``registry.load_model(spec)`` builds one from a spec string, ``options`` types its options."""
