"""The screens of NaN and infinite inputs (adaptd.daemon.execution): a placement's thread, whose
inline inputs the main thread screened, looks only at those read from a region; the main thread
screens a request's inline bodies."""

from __future__ import annotations

import numpy as np
import pytest

from adaptd.daemon.execution import nonfinite_inline, nonfinite_input
from adaptd.wire import protocol as proto


@pytest.mark.parametrize("size", [64, 150_528])   # the sum's screen, and the dot product's
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_with_headers_only_the_inputs_in_a_region_are_screened(size, value):
    bad = np.zeros(size, np.float32)
    bad[size // 2] = value
    fine = np.ones(size, np.float32)
    inline, in_region = {"dtype": "float32", "shape": [size]}, {"dtype": "float32", "shape": [size],
                                                                 "shm": {"region": "r", "offset": 0}}
    assert nonfinite_input([bad, fine]) == 0                                  # every input, without headers
    assert nonfinite_input([bad, fine], [inline, in_region]) is None          # the inline one was screened before
    assert nonfinite_input([fine, bad], [inline, in_region]) == 1
    assert nonfinite_input([bad.astype(np.float16)], [in_region]) == 0        # other float dtypes, exactly


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_large_finite_values_are_not_mistaken_for_infinities():
    x = np.full(150_528, 3e38, np.float32)   # the dot product overflows; isfinite decides
    assert nonfinite_input([x]) is None
    assert nonfinite_input([np.array([1, 2], np.int32)]) is None   # integers hold no NaN


def test_a_requests_inline_bodies_are_screened_and_its_regions_skipped():
    fine, bad = np.ones((1, 4), np.float32), np.array([[0, np.nan, 0, 0]], np.float32)
    header = proto.request_header("r", "m", [fine, bad])
    header["inputs"].insert(0, {"dtype": "float32", "shape": [1, 4], "shm": {"region": "r", "offset": 0}})
    request = proto.parse_request(header)
    assert nonfinite_inline(request, [memoryview(fine), memoryview(bad)]) == 2   # the region's (input 0) skipped
    assert nonfinite_inline(request, [memoryview(fine), memoryview(fine)]) is None
    ints = proto.parse_request(proto.request_header("i", "m", [np.zeros((1, 4), np.int8)]))
    assert nonfinite_inline(ints, [memoryview(np.zeros((1, 4), np.int8))]) is None


@pytest.mark.parametrize("size", [16, 1024, 1025, 150_528])   # by their bytes up to 1024 values, numpy's beyond
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 3e38, -3e38, 1.0])
@pytest.mark.parametrize("fill", [1.0, 3e38])   # 3e38: every value's exponent 254, as an infinity's nearly is
@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_an_inline_float32_body_is_screened_exactly_whatever_its_size(size, value, fill):
    finite = value in (3e38, -3e38, 1.0)
    x = np.full((1, size), fill, np.float32)
    x[0, size - 1] = value
    request = proto.parse_request(proto.request_header("r", "m", [x]))
    assert nonfinite_inline(request, [memoryview(x.tobytes())]) == (None if finite else 0)
    half = np.full((1, size), 6e4, np.float16)   # other float dtypes: numpy's screen
    half[0, size - 1] = value if not finite else 6e4
    request = proto.parse_request(proto.request_header("h", "m", [half]))
    assert nonfinite_inline(request, [memoryview(half.tobytes())]) == (None if finite else 0)


# In a process of its own: a view left on unmapped memory ends its process with SIGSEGV.
VIEW_OUTLIVES_UNMAP = r"""
import os, secrets, sys
import numpy as np
from adaptd.daemon.shm import WorkerMaps
directory = sys.argv[1]
name = f"adaptd-{os.getpid()}-{secrets.token_hex(16)}"
with open(os.path.join(directory, name), "wb") as fh:
    fh.write(np.arange(256, dtype=np.float32).tobytes())
maps = WorkerMaps(directory)
view = maps.view({"region": name, "offset": 0, "size": 1024}, "float32", [1, 16, 16, 1])
maps.unmap([name])   # the region ended while a view of it lives
assert name not in maps.maps
print(float(view.sum()), float(view[0, 15, 15, 0]))
"""


def test_a_view_that_outlives_its_run_keeps_the_region_mapped(tmp_path):
    """A worker's view of a region (adaptd.daemon.shm.WorkerMaps) holds the mapping's buffer: a
    region unmapped while a view of it still lives (one kept past its run by mistake) stays mapped
    until the view goes, so reading it reads the tensor, not unmapped memory."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", VIEW_OUTLIVES_UNMAP, str(tmp_path)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert run.stdout.split() == [str(float(sum(range(256)))), "255.0"]


def test_views_of_a_region_are_kept_with_its_mapping_and_dropped_before_its_unmap(tmp_path):
    """A steady client names the same tensor of a region in every request: WorkerMaps gives back
    the view it made the first time (one per offset, dtype and shape, reading the region's bytes as
    they are now), and drops its views before unmapping, so the mapping closes once no job holds
    a view."""
    import os
    import secrets

    from adaptd.daemon.shm import VIEWS_PER_REGION, WorkerMaps

    name = f"adaptd-{os.getpid()}-{secrets.token_hex(16)}"
    path = tmp_path / name
    path.write_bytes(np.arange(512, dtype=np.float32).tobytes())
    maps = WorkerMaps(tmp_path)
    ref = {"region": name, "offset": 0, "size": 2048}
    first = maps.view(ref, "float32", [1, 16, 16, 1])
    assert maps.view(dict(ref), "float32", [1, 16, 16, 1]) is first
    other = maps.view({**ref, "offset": 1024}, "float32", [1, 16, 16, 1])
    assert other is not first and float(other[0, 0, 0, 0]) == 256.0
    assert maps.view(ref, "float32", [256]) is not first
    with open(path, "r+b") as fh:   # the client writes its next input in place
        fh.write(np.full(256, 7.0, np.float32).tobytes())
    assert float(first.sum()) == 7.0 * 256
    for offset in range(0, 8 * VIEWS_PER_REGION, 8):   # more tensors than are kept: made afresh
        assert float(maps.view({**ref, "offset": offset}, "float32", [1])[0]) == 7.0
        assert len(maps._views[name]) <= VIEWS_PER_REGION
    assert maps.view(ref, "float32", [1, 16, 16, 1]) is not first   # (dropped with the others, made again)
    mm = maps.maps[name]
    del first, other
    maps.unmap([name])
    assert name not in maps.maps and mm.closed
    with pytest.raises(ValueError, match="outside region"):
        WorkerMaps(tmp_path).view({**ref, "offset": 2048}, "float32", [1])
