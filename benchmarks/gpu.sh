#!/usr/bin/env bash
# One command for a machine with a GPU and no network: install what is missing from wheels placed
# beside this script (or in $WHEELS), then run the GPU benchmark (benchmarks/gpu.py) with the CUDA engine.
#
#   WHEELS=/path/to/wheels benchmarks/gpu.sh [gpu.py options, e.g. --out gpu.json]
#
# The machine's own Python must already hold PyTorch with CUDA (the GPU machines here do). The wheels:
# semtile's pure-Python dependencies that such an image lacks (dask, distributed, zarr, numcodecs,
# donfig, structlog, locket, partd, zict, tblib, tornado, google-crc32c, monai, ...), fetched where pip
# works with `pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d wheels NAME==VERSION`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
wheels="${WHEELS:-$here/wheels}"
python="${PYTHON:-python3}"
site="${SEMTILE_GPU_SITE:-${TMPDIR:-/tmp}/semtile-gpu-site}"
if compgen -G "$wheels/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "no wheels in $wheels: using what $python already has" >&2
fi
# The checkout itself (semtile/__init__.py maps kernels/ and cli/ in as semtile.kernels and semtile.cli).
export PYTHONPATH="$root:$PYTHONPATH"
"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), torch.__version__)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
lscpu | grep -E "Model name|^CPU\(s\)" || true
cd "$root"
exec "$python" -u benchmarks/gpu.py "$@"
