"""Defects and anomalies: a supervised patch classifier and autoencoder anomaly maps for whole scans.

One concept per module:

* ``conformance``: the engines against PyTorch on patch scores and AUC;
* ``data``: defect datasets in memory; ``augment``: flips, turns, intensity jitter; ``training``;
* ``anomaly``: whole-scan anomaly maps through the tiled path, pooled scores, threshold calibration;
  ``classify``: patch classification of a whole scan; ``variants``: the score variants compared;
* ``scores``: AUC-ROC, AP, pixel AUROC, PRO, the ROC figure; ``evaluate``: a model scored on a dataset.

The networks, their cards, exports and engines are the models' and engines' own, as for every kind:
:mod:`semtile.models.defect_networks` (the patch classifier, the autoencoder, the VAE, the anomaly map),
:mod:`semtile.models.io` (weights + card, sha256), :mod:`semtile.models.export` (ONNX, cached) and
:mod:`semtile.engines` (PyTorch, ONNX Runtime and OpenVINO, one registry).

For ``semtile process --anomaly MODEL``: :func:`semtile.defects.anomaly.anomaly_map` (a whole image
-> map and anomaly fraction) and :func:`semtile.defects.anomaly.calibrate_threshold`.
"""
