"""Explanations people can check: heat maps of the classifier for whole scans, heat maps
turned into masks, scores against true masks, centre-biased mask selection, latent clusters.

* :mod:`semtile.explain.heatmaps` -- Grad-CAM and CAM per tile (PyTorch), blended like the mask;
* :mod:`semtile.explain.run` -- ``semtile explain``: heat maps of stored results, written beside the mask;
* :mod:`semtile.explain.masks` -- heat map -> mask (003's Algorithm 2, Otsu), centre-biased selection
  (003's Algorithm 1) and its candidate masks;
* :mod:`semtile.explain.scores` -- accuracy, precision, recall, Dice, IoU; tau on a validation split.

Submodules are imported where used (torch, scikit-image and matplotlib are slow to import).
"""
