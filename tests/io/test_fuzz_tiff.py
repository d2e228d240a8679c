"""Property-based fuzzing of open_scan: mutated TIFF headers and tags never escape as anything but ImageError.

Each example takes a small valid scan (:mod:`semtile.synth` pixels in several
TIFF layouts), applies a few mutations of its first IFD (dimensions, offsets,
byte counts, bits per sample, sample format, compression, photometric, strip
counts, tag types and codes, byte flips, truncation) and checks
:func:`tiff_mutations.check_case`: the valid area computes to float32 in
[0, 1] of the header's shape, or an ImageError names the file. A deadline
catches hangs; a small pixel budget bounds every allocation. More examples:
``SEMTILE_FUZZ_EXAMPLES=5000``; ``benchmarks/fuzz_tiff.py`` runs the same
mutations through the batch pipeline.
"""

from __future__ import annotations

import os
import resource
import signal
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from tiff_mutations import Chooser, apply_mutations, check_case, draw_mutations, write_base_files

EXAMPLES = int(os.environ.get("SEMTILE_FUZZ_EXAMPLES", "500"))
#: Seconds one case may take before it counts as a hang.
DEADLINE_S = 10
#: The budget for the fuzzed files: 4 Mpx, 16 MB of float32 (the bases have 12288 pixels).
MAX_PIXELS = 2**22


class _Drawing(Chooser):
    def __init__(self, data):
        self.data = data

    def choice(self, items):
        return self.data.draw(st.sampled_from(items))

    def integer(self, low, high):
        return self.data.draw(st.integers(low, high))


@contextmanager
def _deadline(seconds: int):
    if not hasattr(signal, "setitimer"):  # Windows: no deadline
        yield
        return

    def hang(signum, frame):
        raise TimeoutError(f"a case ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """(path, bytes) of each base file."""
    return [(path, path.read_bytes()) for path in write_base_files(tmp_path_factory.mktemp("fuzz-bases"))]


def test_bases_are_valid(bases):
    for path, _ in bases:
        assert check_case(path, max_pixels=MAX_PIXELS)[0] == "processed", path


@pytest.mark.slow
def test_mutated_tiffs_open_or_raise_image_error(bases, tmp_path_factory):
    by_name = {path.name: data for path, data in bases}
    case = tmp_path_factory.mktemp("fuzz-case") / "case.tif"
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    @settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def prop(data):
        name = data.draw(st.sampled_from(sorted(by_name)), label="base")
        base = by_name[name]
        mutations = draw_mutations(_Drawing(data), base)
        data.draw(st.just(mutations), label="mutations")
        case.write_bytes(apply_mutations(base, mutations))
        with _deadline(DEADLINE_S):
            check_case(case, max_pixels=MAX_PIXELS)

    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))  # its caches stay out of the checkout
    try:
        prop()
    finally:
        set_hypothesis_home_dir(None)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start_rss) / 1024
    assert grown_mib < 1024, f"peak memory grew by {grown_mib:.0f} MiB while fuzzing"
