"""semtile: batch tiling, segmentation and classification of SEM images."""

import importlib.util
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("semtile")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "open_results"]


def __getattr__(name: str):
    # ``semtile.open_results`` is imported on first use: pandas and zarr would slow every ``semtile`` command.
    if name == "open_results":
        from semtile.results import open_results

        return open_results
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _map_checkout_packages() -> None:
    """Import the checkout's ``kernels/`` and ``cli/`` as ``semtile.kernels`` and ``semtile.cli``.

    The repository keeps them at its top level and the installed distribution
    maps them in (``package-dir`` in pyproject.toml). When this folder is
    imported straight from a checkout (the repository root is first on
    ``sys.path`` for ``python -m pytest``, ``python -c`` and pytest's
    ``pythonpath``), the same mapping is made here, so the checkout is what
    runs. An installed copy has the folders inside it and skips this.
    """
    here = Path(__file__).resolve().parent
    for name in ("kernels", "cli"):
        full = f"{__name__}.{name}"
        source = here.parent / name
        if full in sys.modules or (here / name).exists() or not (source / "__init__.py").is_file():
            continue
        spec = importlib.util.spec_from_file_location(full, source / "__init__.py",
                                                      submodule_search_locations=[str(source)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
        setattr(sys.modules[__name__], name, module)


_map_checkout_packages()
