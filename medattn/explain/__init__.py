"""Explanations of medattn models.

Counterfactuals for bag (MIL) models, HIPPO-style: :mod:`.engines` (the loop, generic batched and
engine choice), :mod:`.exact` (the exact incremental engine for attention pooling), :mod:`.search`
(greedy necessity/sufficiency search), :mod:`.regions` (patches inside a mask or GeoJSON region) and
:mod:`.experiments` (``explain_bag``: the experiments, their CSV files and ``summary.json``).
Plots, segmentation explanations and reports live in :mod:`.plots`, :mod:`.segmentation` and the
report modules. Nothing is imported here, so importing one part does not load the others.
"""
