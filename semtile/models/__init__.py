"""The paper's networks, model files and cards, ONNX export, the built-in model."""
