"""A result store read by plain zarr: the results are the root's members, and the one complaint is the hidden
bookkeeping folder ``.semtile`` (why it stays: docs/formats.md, "Plain Zarr and `.semtile/`")."""

from __future__ import annotations

import warnings

import zarr

from sample_results import write_results


def test_plain_zarr_lists_the_results_and_warns_of_semtile_only(tmp_path):
    store = write_results(tmp_path, n=3, failures=False)
    assert (store / ".semtile").is_dir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        members = sorted(name for name, _ in zarr.open_group(store, mode="r").members())
    assert members == ["scan_0", "scan_1", "scan_2"]
    complaints = {str(w.message) for w in caught}
    assert complaints <= {"Object at .semtile is not recognized as a component of a Zarr hierarchy."}
