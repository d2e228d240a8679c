"""Inference engines behind one small interface (one file per backend)."""
