"""Synthetic SEM data with exact ground truth: the backbone of tests and of the built-in demo."""

from semtile.synth.surfaces import SynthConfig, databar_height, synth_surface, write_dataset

__all__ = ["SynthConfig", "databar_height", "synth_surface", "write_dataset"]
