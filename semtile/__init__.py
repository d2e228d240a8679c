"""semtile: batch tiling, segmentation and classification of SEM images."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("semtile")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
