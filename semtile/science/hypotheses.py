"""Hypothesis curves g(t), as the science sees them: defined in :mod:`semtile.synth.hypotheses`.

The curves live one layer down, with the synthetic data they generate (ARCHITECTURE.md: synth may
not import science); this module keeps the science-side name for training, ranking and the CLI.
"""

from semtile.synth.hypotheses import HYPOTHESES, hypothesis_values, is_learned, parse_g_range, parse_hypothesis

__all__ = ["HYPOTHESES", "hypothesis_values", "parse_hypothesis", "parse_g_range", "is_learned"]
