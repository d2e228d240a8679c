"""Defects and anomalies: a supervised patch classifier and autoencoder anomaly maps for whole scans.

One concept per module:

* ``networks``: the patch classifier, the autoencoder, the VAE and the anomaly map they give;
* ``modelio``: weights + card (sha256) on disk; ``export``: ONNX exports (cached);
  ``engines``: PyTorch, ONNX Runtime and OpenVINO runners; ``conformance``: engines against PyTorch;
* ``data``: defect datasets in memory; ``augment``: flips, turns, intensity jitter; ``training``;
* ``anomaly``: whole-scan anomaly maps through the tiled path, pooled scores, threshold calibration;
  ``classify``: patch classification of a whole scan; ``variants``: the score variants compared;
* ``scores``: AUC-ROC, AP, pixel AUROC, PRO, the ROC figure; ``evaluate``: a model scored on a dataset.

For ``semtile process --anomaly MODEL``: :func:`semtile.defects.anomaly.anomaly_map` (a whole image
-> map and anomaly fraction) and :func:`semtile.defects.anomaly.calibrate_threshold`.
"""
