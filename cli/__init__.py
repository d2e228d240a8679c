"""Thin click commands over the semtile library."""
