"""What each variant accepts, and a uint8 frame turned into what it takes (no TensorFlow, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from adaptd.variants.manifest import Preprocessing, Quantization, TensorSpec
from adaptd.variants.preprocess import InputPreparer, accepted_dtypes, accepts, quantize

SHAPE = (1, 6, 5, 3)
PER_CHANNEL = Preprocessing((0.0171, 0.0175, 0.0174), (-2.118, -2.036, -1.804))   # ImageNet mean/std
SCALAR = Preprocessing(2 / 255, -1.0)


class Rec:
    """The two fields of a VariantRecord that admission reads."""

    def __init__(self, *inputs: TensorSpec) -> None:
        self.inputs = inputs


def frames(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE[1:]), dtype=np.uint8)


def reference(x: np.ndarray, pre: Preprocessing) -> np.ndarray:
    return x.astype(np.float32) * np.asarray(pre.scale, np.float32) + np.asarray(pre.offset, np.float32)


@pytest.mark.parametrize("pre", [SCALAR, PER_CHANNEL, Preprocessing.included()])
def test_a_frame_for_a_float_input_is_scaled_and_offset(pre) -> None:
    prepare = InputPreparer(TensorSpec("image", "float32", SHAPE, None, pre), 0)
    x = frames()
    got = prepare(x)
    assert got.dtype == np.float32 and got.shape == x.shape and got.flags.c_contiguous
    np.testing.assert_allclose(got, reference(x, pre), rtol=1e-6, atol=1e-6)
    # a float input is taken as already preprocessed: passed as it is
    f = reference(x, pre)
    assert prepare(f) is f or np.array_equal(prepare(f), f)


@pytest.mark.parametrize("pre", [SCALAR, PER_CHANNEL])
def test_a_frame_for_an_int8_input_is_preprocessed_and_quantized_in_one_step(pre) -> None:
    q = Quantization(0.0157, -3)
    spec = TensorSpec("image", "int8", SHAPE, q, pre)
    prepare = InputPreparer(spec, 0)
    x = frames(8)
    got = prepare(x)
    two_steps = quantize(reference(x, pre), q, np.dtype(np.int8))
    assert got.dtype == np.int8 and got.shape == x.shape
    # one rounding instead of two float roundings: at most one step apart, almost always equal
    assert np.max(np.abs(got.astype(np.int16) - two_steps)) <= 1
    assert np.mean(got == two_steps) > 0.99
    # the scratch buffer is the preparer's: a returned array never changes under the caller
    kept = got.copy()
    prepare(frames(8, seed=1))
    assert np.array_equal(got, kept)
    # and float input still quantizes with the recorded parameters
    np.testing.assert_array_equal(prepare(reference(x, pre)), two_steps)


def test_saturation_of_the_combined_step() -> None:
    spec = TensorSpec("x", "int8", (1, 2), Quantization(1 / 255, -128), Preprocessing(4 / 255, -1.0))
    out = InputPreparer(spec, 0)(np.array([[0, 255]], np.uint8))
    assert out.tolist() == [[-128, 127]]


def test_without_preprocessing_uint8_is_refused_naming_the_input() -> None:
    prepare = InputPreparer(TensorSpec("signal", "float32", (1, 4), None, None), 1)
    with pytest.raises(ValueError, match=r"input 1 \(signal\): got uint8, expected float32"):
        prepare(np.zeros((1, 4), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        InputPreparer(TensorSpec("image", "float32", SHAPE, None, SCALAR), 0)(np.zeros((1, 6, 5, 4), np.uint8))


def test_an_integer_input_takes_its_own_dtype_unchanged() -> None:
    spec = TensorSpec("x", "uint8", (1, 3), Quantization(1 / 128, 128), None)
    x = np.array([[1, 2, 3]], np.uint8)
    assert InputPreparer(spec, 0)(x) is x


def test_admission_follows_the_same_rule() -> None:
    framed = Rec(TensorSpec("image", "int8", SHAPE, Quantization(0.1, 0), SCALAR), TensorSpec("aux", "float32", (1, 2)))
    plain = Rec(TensorSpec("image", "float32", SHAPE), TensorSpec("aux", "float32", (1, 2)))
    assert accepts(framed, ["uint8", "float32"]) and accepts(framed, ["int8", "float32"])
    assert not accepts(plain, ["uint8", "float32"]) and not accepts(framed, ["float32", "uint8"])
    assert accepts(plain, ["float32", "float32"])
    assert accepted_dtypes([plain]) == ["float32"]
    assert accepted_dtypes([framed, plain]) == ["float32", "int8", "uint8"]


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_the_fast_quantizing_path_matches_quantize_to_the_bit(dtype) -> None:
    """A float32 input for an integer input takes the preparer's shortcut to quantize(), whose
    steps run in place: the values of the plain formula (round half to even, then the zero point,
    saturating), half-way cases and saturation included."""
    q = Quantization(0.0125, -3 if dtype == np.int8 else 120)
    spec = TensorSpec("x", np.dtype(dtype).name, SHAPE, quantization=q)
    prepare = InputPreparer(spec, 0)
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 1.5, (5, *SHAPE[1:])).astype(np.float32)
    x.flat[:8] = np.float32(q.scale) * np.array([0.5, 1.5, -0.5, -2.5, 2.5, 1e6, -1e6, 0.0], np.float32)
    got = prepare(x)
    assert got.dtype == np.dtype(dtype)
    info = np.iinfo(dtype)
    plain = np.clip(np.round(x / np.float32(q.scale)) + q.zero_point, info.min, info.max).astype(dtype)
    np.testing.assert_array_equal(got, plain)
    np.testing.assert_array_equal(quantize(x, q, np.dtype(dtype)), plain)
