"""Datasets, MONAI transform pipelines and synthetic generators.

- :mod:`medattn.data.dataset`: dataset descriptions (dataset.json, CSV, JSON lists) → cases.
- :mod:`medattn.data.transforms`: loading with checks, preprocessing and augmentation.
- :mod:`medattn.data.loader`: cached datasets and seeded DataLoaders.
- :mod:`medattn.data.phantoms`, :mod:`medattn.data.synth`: synthetic phantoms and datasets.
"""
