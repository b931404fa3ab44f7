"""Shared fixtures.

``tiny_repository`` (session scope) builds a real model repository through the real variant
pipeline (real TFLite conversions, real LiteRT/TensorFlow runs, measurements in child
processes): a tiny CNN on scikit-learn's digits at 8x8, all variant kinds including
``float32_tf`` and the pruned ones (1 fine-tuning epoch). It returns
``(repo_root: Path, model_name: str, version: str)``. Treat the repository as read-only;
copy it (``shutil.copytree``) if a test must change it. About 20-30 s on 2 cores.

``slow_repository`` (session scope) holds one model, ``slow``: a stack of 3x3 convolutions on
32x32x8 inputs, about 10 ms per image on one core, float32 only, built through the real pipeline
in a child process. Tests use it where an execution must last long enough to act on (a request
in flight, a queue that fills, a core that gets contended). It returns the repository's root.

``kernel_pidfds`` runs a test twice: on this kernel's pidfds, and as on a kernel without them
(Linux before 5.3, such as the TX2's L4T 4.9), where ``os.pidfd_open`` is replaced by a function
that raises what Python raises there (``OSError``, ``ENOSYS``); in this process only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def refused_pidfd_open(errno_: int):
    """An ``os.pidfd_open`` whose system call fails with ``errno_``, as Python raises it."""
    def pidfd_open(pid, flags=0, /):
        raise OSError(errno_, os.strerror(errno_))
    return pidfd_open


@pytest.fixture(params=["pidfd", "no pidfd"])
def kernel_pidfds(request, monkeypatch):
    from adaptd.daemon import procwatch

    monkeypatch.setattr(procwatch, "_pidfd", None)   # (asked afresh)
    if request.param == "no pidfd":
        monkeypatch.setattr(os, "pidfd_open", refused_pidfd_open(errno.ENOSYS))
    elif not procwatch.pidfd_available():
        pytest.skip("this kernel (or its seccomp filter) gives no pidfds")
    assert procwatch.pidfd_available() == (request.param == "pidfd")
    return request.param


def wait_until(predicate, what: str, timeout_s: float = 60.0):
    """Ask ``predicate`` (which itself waits on something: a reply, /proc) until it returns a
    truthy value, and return that; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
    raise AssertionError(f"timed out waiting for {what}")

TINY_MODEL = "tiny"


def _tiny_data() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(0).permutation(len(x))
    x, y = x[idx], y[idx]
    return {"x_train": x[:1200], "y_train": y[:1200], "x_val": x[1200:1500], "y_val": y[1200:1500]}


def _tiny_keras_model(data: dict[str, np.ndarray]):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    h = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(32, activation="relu")(h)
    out = keras.layers.Dense(10, activation="softmax")(h)
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(data["x_train"], data["y_train"], epochs=4, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory) -> tuple[Path, Path]:
    """``(model.keras, data.npz)``: the tiny trained CNN and its digits split (8x8x1, 10 classes)."""
    d = tmp_path_factory.mktemp("tiny-source")
    data = _tiny_data()
    model = _tiny_keras_model(data)
    model_path, data_path = d / "tiny.keras", d / "tiny.npz"
    model.save(model_path)
    np.savez(data_path, **data)
    return model_path, data_path


@pytest.fixture(scope="session")
def tiny_repository(tiny_source, tmp_path_factory) -> tuple[Path, str, str]:
    """A real repository with every variant kind of the tiny CNN: (repo_root, model, version)."""
    from adaptd.variants.build import BuildOptions, build_entry
    from adaptd.variants.convert import open_source
    from adaptd.variants.dataset import check_against_model, file_sha256, load_dataset

    t0 = time.perf_counter()
    model_path, data_path = tiny_source
    repo = tmp_path_factory.mktemp("tiny-repo")
    ds = load_dataset(data_path)
    source = open_source(model_path)
    check_against_model(ds, source.inputs, source.num_classes)
    opts = BuildOptions(epochs=1, progress=False, latency_runs=10, latency_max_s=0.2)
    version_dir, manifest = build_entry(repo, TINY_MODEL, source, ds, options=opts,
                                        source_sha256=file_sha256(model_path))
    print(f"\ntiny_repository built in {time.perf_counter() - t0:.1f} s")
    return repo, manifest.model, manifest.version


SLOW_MODEL = "slow"
SLOW_SHAPE = (32, 32, 8)
_SLOW_BUILD = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from pathlib import Path
import keras
import numpy as np
from adaptd.variants.build import BuildOptions, build_entry
from adaptd.variants.convert import open_source

out = Path(sys.argv[1])
keras.utils.set_random_seed(0)
layers = [keras.Input({shape})]
layers += [keras.layers.Conv2D(64, 3, padding="same", activation="relu") for _ in range(6)]
layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4, activation="softmax")]
keras.Sequential(layers).save(out / "slow.keras")
opts = BuildOptions(kinds=("float32",), progress=False, latency_runs=3, latency_max_s=0.2)
rep = np.random.default_rng(0).random((4, *{shape}), dtype=np.float32)
build_entry(out / "repo", "{model}", open_source(out / "slow.keras"), None, options=opts, representative=rep)
""".format(shape=SLOW_SHAPE, model=SLOW_MODEL)


@pytest.fixture(scope="session")
def slow_repository(tmp_path_factory) -> Path:
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("slow-model")
    proc = subprocess.run([sys.executable, "-c", _SLOW_BUILD, str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "repo" / SLOW_MODEL / "1" / "manifest.json").exists()
    return out / "repo"


@contextlib.contextmanager
def taken_port():
    """A loopback TCP port another socket holds (listening) for the block: a daemon told to use
    it must fail to start."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def pytest_sessionfinish(session, exitstatus):
    """A test that fails between starting a daemon and stopping it leaves that daemon running:
    end every process this run started that is still alive, so a failed run leaves none behind."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass


def enum_calls(fn) -> list[str]:
    """The enum module's functions that ``fn()`` calls on this thread (a profile of it): where the
    request path must not pay for enum arithmetic (``socket.MSG_*``, ``zmq.POLLIN`` are enum
    flags, and their ``|`` or ``&`` runs the enum module's Python)."""
    import sys

    seen: list[str] = []

    def profile(frame, event, arg) -> None:
        if event == "call" and frame.f_code.co_filename.endswith("enum.py"):
            seen.append(frame.f_code.co_name)
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return seen


@pytest.fixture
def unix_pair():
    """A connected Unix stream socket pair ``(a, b)``, ``b`` non-blocking (the reading end)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def read_ready(reader, sock: socket.socket) -> list:
    """Every message a framing reader (the local stream's, or the ZMTP one) finds complete on the
    non-blocking ``sock`` now: each as its frames' bytes, a ``TooLarge`` as it is."""
    got = []
    while True:
        try:
            got += reader.read_from(sock)
        except BlockingIOError:
            return [m if not isinstance(m, list) else [bytes(f) for f in m] for m in got]


def read_in_cuts(reader, data: bytes, cuts: list[int]) -> list:
    """``data`` sent over a socket pair in pieces of the sizes ``cuts`` gives in turn, each read by
    ``reader`` as it arrives (:func:`read_ready`): the messages it gave back."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.setblocking(False)
    try:
        got, at, i = [], 0, 0
        while at < len(data):
            step = cuts[i % len(cuts)]
            a.sendall(data[at:at + step])
            at, i = at + step, i + 1
            got += read_ready(reader, b)
        return got
    finally:
        a.close()
        b.close()
