"""The reservoir of disagreeing inputs: uniform sampling within its bounds, thread safety, and
an export that ``adaptd variants build`` accepts and calibrates the int8 variants on."""

from __future__ import annotations

import argparse
import threading

import numpy as np
import pytest

from adaptd.daemon.reservoir import LABEL_SOURCE, DisagreementReservoir
from adaptd.variants.dataset import check_against_model, load_dataset
from adaptd.variants.manifest import load_manifest


def offer(r: DisagreementReservoir, x: np.ndarray, i: int = 0) -> bool:
    return r.offer(x, reference_top1=i % 10, served_variant="int8_full", served_top1=(i + 1) % 10, t_s=float(i))


def test_it_keeps_a_uniform_sample_of_everything_offered():
    n, k, trials = 50, 10, 2000
    kept = np.zeros(n)
    for seed in range(trials):
        r = DisagreementReservoir("m", "1", "float32", max_items=k, seed=seed)
        for i in range(n):
            offer(r, np.full((2,), i, np.float32), i)
        assert len(r) == k and r.offered == n
        for it in r.items():
            kept[int(it.x[0])] += 1
    freq = kept / trials                            # each input should be kept with k / n = 0.2
    sd = np.sqrt(0.2 * 0.8 / trials)
    assert np.all(np.abs(freq - k / n) < 5 * sd), freq
    chi2 = float(np.sum((kept - trials * k / n) ** 2 / (trials * k / n)))
    assert chi2 < 100, chi2                          # 49 degrees of freedom: the 0.9999 quantile is ~95


def test_its_size_is_bounded_in_items_and_in_bytes():
    r = DisagreementReservoir("m", "1", "float32", max_items=100, max_bytes=10 * 64)
    for i in range(500):
        offer(r, np.zeros((4, 4), np.float64), i)   # 64 bytes once kept as float32
    assert r.capacity == 10 and len(r) == 10 and r.nbytes == 640
    assert r.items()[0].x.dtype == np.float32
    tiny = DisagreementReservoir("m", "1", "float32", max_bytes=10)
    assert offer(tiny, np.zeros((4, 4), np.float32)) is False and len(tiny) == 0


def test_it_refuses_what_it_cannot_export():
    r = DisagreementReservoir("m", "1", "float32")
    offer(r, np.zeros((8, 8, 1), np.float32))
    with pytest.raises(ValueError, match="shape"):
        offer(r, np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="floating point"):
        offer(r, np.zeros((8, 8, 1), np.int8))
    assert len(r) == 1 and r.offered == 1
    with pytest.raises(ValueError, match="nothing to export"):
        DisagreementReservoir("m", "1", "float32").export("/nonexistent/x.npz")


def test_it_copies_what_it_keeps():
    r = DisagreementReservoir("m", "1", "float32")
    buf = np.ones((3,), np.float32)
    offer(r, buf)
    buf[:] = 7.0                                     # the caller reuses its buffer
    assert r.items()[0].x.tolist() == [1.0, 1.0, 1.0]


def test_a_batch_offers_only_its_disagreeing_rows():
    r = DisagreementReservoir("m", "1", "float32")
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    kept = r.offer_batch(x, reference_top1=np.array([1, 2, 3, 4]), served_variant="int8_full",
                         served_top1=np.array([1, 0, 3, 0]), t_s=1.0,
                         disagreed=np.array([False, True, False, True]))
    assert kept == 2 and [it.reference_top1 for it in r.items()] == [2, 4]
    assert [it.x[0] for it in r.items()] == [3.0, 9.0]


def test_concurrent_offers_and_exports_are_consistent(tmp_path):
    r = DisagreementReservoir("m", "1", "float32", max_items=64)
    errors: list[BaseException] = []

    def producer(base: int) -> None:
        try:
            for i in range(2000):
                offer(r, np.full((4,), base + i, np.float32), i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=producer, args=(10_000 * j,)) for j in range(4)]
    for t in threads:
        t.start()
    exported = []
    while any(t.is_alive() for t in threads):
        if len(r):
            exported.append(r.export(tmp_path / "live.npz"))
    for t in threads:
        t.join()
    exported.append(r.export(tmp_path / "live.npz"))   # and once after: the producers may all finish first
    assert not errors and r.offered == 8000 and len(r) == 64
    assert len({float(it.x[0]) for it in r.items()}) == 64     # no slot written twice at once
    assert all(1 <= n <= 64 for n in exported)
    with np.load(tmp_path / "live.npz") as z:
        assert z["x_val"].shape[1:] == (4,) and len(z["x_val"]) == len(z["y_val"])


def _fill_with_shifted_disagreements(repo, model, version, x, scale, offset, max_items=200):
    """Run the real float32 and int8_full variants on shifted inputs, offer the disagreements."""
    from adaptd.variants.repository import resolve
    from adaptd.variants.runtime import load_variant

    vdir, manifest = resolve(repo, model, version)
    ref = load_variant(vdir, manifest.variant("float32"))
    served = load_variant(vdir, manifest.variant("int8_full"))
    r = DisagreementReservoir(model, version, "float32", max_items=max_items)
    xs = (x * np.float32(scale) + np.float32(offset)).astype(np.float32)
    ref_top1 = np.argmax(ref.run([xs])[0], -1)
    served_top1 = np.argmax(served.run([xs])[0], -1)
    r.offer_batch(xs, reference_top1=ref_top1, served_variant="int8_full", served_top1=served_top1,
                  t_s=0.0, disagreed=ref_top1 != served_top1)
    return r, xs, ref_top1, served, ref


def test_the_export_is_a_dataset_with_pseudo_labels(tiny_repository, tiny_source, tmp_path):
    repo, model, version = tiny_repository
    x = np.load(tiny_source[1])["x_val"].astype(np.float32)
    r, xs, ref_top1, _, _ = _fill_with_shifted_disagreements(repo, model, version, x, 4.0, 0.75)
    assert len(r) > 50                                   # the shift makes int8_full disagree often
    path = tmp_path / "disagreements.npz"
    assert r.export(path) == len(r)
    ds = load_dataset(path)
    inputs = load_manifest(repo / model / version).inputs
    check_against_model(ds, inputs, 10)
    (x_val,) = ds.x_val.values() if isinstance(ds.x_val, dict) else (ds.x_val,)
    assert x_val.shape == (len(r), 8, 8, 1) and ds.x_train is None
    # y_val is the reference's top-1 on each kept input, and the file says so.
    index = {xs[i].tobytes(): int(ref_top1[i]) for i in range(len(xs))}
    assert [index[row.tobytes()] for row in x_val] == ds.y_val.tolist()
    with np.load(path) as z:
        assert str(z["label_source"]) == LABEL_SOURCE and str(z["reference"]) == "float32"
        assert (z["served_top1"] != z["y_val"]).all() and set(z["served_variant"].tolist()) == {"int8_full"}
    assert not list(tmp_path.glob(".*"))                 # no temporary file left behind


@pytest.mark.slow
def test_the_build_calibrates_int8_on_the_exported_inputs(tiny_repository, tiny_source, tmp_path, capsys):
    """`adaptd variants build --data <export>`: the rebuilt int8_full is calibrated on the
    shifted inputs (its input range now covers them) and agrees with float32 on them far more
    often than the int8_full that was calibrated on the original inputs."""
    from adaptd.cli.variants import run_build
    from adaptd.variants.repository import resolve
    from adaptd.variants.runtime import load_variant

    repo, model, version = tiny_repository
    x = np.load(tiny_source[1])["x_val"].astype(np.float32)
    r, xs, ref_top1, old_int8, _ = _fill_with_shifted_disagreements(repo, model, version, x, 4.0, 0.75)
    data = tmp_path / "disagreements.npz"
    r.export(data)
    out = tmp_path / "rebuilt"
    args = argparse.Namespace(model=str(tiny_source[0]), data=str(data), repository=str(out), name=model,
                              model_version=None, kinds="float32,int8_full", epochs=0, no_progress=True)
    assert run_build(args) == 0
    vdir, manifest = resolve(out, model)
    q = manifest.variant("int8_full").inputs[0].quantization
    assert (127 - q.zero_point) * q.scale >= 0.95 * float(xs.max())   # calibrated on the shifted range
    # Recorded "accuracy" is agreement with the reference's pseudo-labels on the kept inputs.
    assert manifest.variant("float32").metrics.accuracy == pytest.approx(1.0)
    new_int8 = load_variant(vdir, manifest.variant("int8_full"))
    old_agree = np.mean(np.argmax(old_int8.run([xs])[0], -1) == ref_top1)
    new_agree = np.mean(np.argmax(new_int8.run([xs])[0], -1) == ref_top1)
    assert new_agree > old_agree + 0.3, (old_agree, new_agree)
