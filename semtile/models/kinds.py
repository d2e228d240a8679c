"""The model kinds, importable without torch (the engine table and the command line read them).

* ``classifier``, ``segmenter``: the paper's (c, d, n, N) networks, run together as a *bundle*;
* ``patch-classifier``, ``autoencoder``, ``vae``: the defect networks, each run on its own.
"""

from __future__ import annotations

__all__ = ["BUNDLE", "BUNDLE_KINDS", "DEFECT_KINDS", "ANOMALY_KINDS", "MODEL_KINDS", "ENGINE_KINDS", "OUTPUTS"]

#: What an engine runs for ``semtile process``: a classifier and a segmenter together.
BUNDLE = "bundle"
BUNDLE_KINDS = ("classifier", "segmenter")
DEFECT_KINDS = ("patch-classifier", "autoencoder", "vae")
#: The defect kinds that give a per-pixel anomaly map.
ANOMALY_KINDS = ("autoencoder", "vae")
MODEL_KINDS = (*BUNDLE_KINDS, *DEFECT_KINDS)
#: What an engine can be built for: a bundle or one defect model.
ENGINE_KINDS = (BUNDLE, *DEFECT_KINDS)
#: The output of each kind's inference graph (its ONNX output name).
OUTPUTS = {"classifier": "class_logits", "segmenter": "mask_probs", "patch-classifier": "defect_probability",
           "autoencoder": "anomaly_map", "vae": "anomaly_map"}
