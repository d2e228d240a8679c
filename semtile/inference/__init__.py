"""The one tiled-inference path: split into tiles, run an engine, merge tile outputs back."""
