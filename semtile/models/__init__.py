"""Every model kind in one place: the paper's (c, d, n, N) networks and the defect networks (``networks``,
``defect_networks``, ``kinds``), model files and cards with one loader (``io``), ONNX exports with their
conformance record (``export``), the built-in model."""
