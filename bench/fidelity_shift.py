"""How far the demo's inputs must move out of the int8 variants' calibration range before their
agreement with float32 drops, while float32 stays right.

Usage: python bench/fidelity_shift.py [--repository demo-repo] [--scales 1,2,4,8,16]
                                      [--offsets 0,0.25,0.5,0.75] [--variants ...] [--threads 1]

Needs a built demo repository (``adaptd demo build --repository demo-repo``) and the ``build``
extra (scikit-learn's bundled digits). Every validation image x of the demo's split (the one the
manifest's accuracies were measured on, n = 360) is shifted to ``scale * x + offset`` and run,
one batch of 60 at a time, through real LiteRT interpreters of each variant, exactly as the
daemon's workers run them (``adaptd.variants.runtime``: float inputs, quantized with the
recorded scale and zero point for integer-input variants). Printed per shift, as a Markdown
table: float32's accuracy on the labels, and per variant its top-1 agreement with float32 (with
a 95 % Wilson interval) and its own accuracy. The demo's inputs lie in [0, 1], and so does
int8_full's calibrated input range (printed first): a scale above 1 saturates the bright
pixels of int8_full's input, an offset lifts the background.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    from adaptd.selector.agreement import wilson_interval
    from adaptd.variants.demo import MODEL_NAME, digits_dataset
    from adaptd.variants.repository import resolve
    from adaptd.variants.runtime import load_variant

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repository", default="demo-repo")
    ap.add_argument("--version", default=None)
    ap.add_argument("--scales", type=floats, default=floats("1,1.5,2,4,8,16"))
    ap.add_argument("--offsets", type=floats, default=floats("0,0.25,0.5,0.75"))
    ap.add_argument("--variants", default="int8_full,int8_dynamic,pruned75_int8,float16")
    ap.add_argument("--reference", default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--confidence", type=float, default=0.95)
    args = ap.parse_args(argv)

    vdir, manifest = resolve(args.repository, MODEL_NAME, args.version)
    names = [args.reference] + [n for n in args.variants.split(",") if n and n != args.reference]
    loaded = {n: load_variant(vdir, manifest.variant(n), num_threads=args.threads) for n in names}
    ds = digits_dataset()
    x, y = ds.x_val, ds.y_val
    q = manifest.variant("int8_full").inputs[0].quantization if "int8_full" in names else None
    print(f"# {manifest.model} v{manifest.version} from {vdir}; validation split n={len(x)}, "
          f"inputs in [{x.min():.3g}, {x.max():.3g}]")
    if q is not None:
        lo, hi = (-128 - q.zero_point) * q.scale, (127 - q.zero_point) * q.scale
        print(f"# int8_full input: scale {q.scale:.6g}, zero point {q.zero_point}: represents [{lo:.3g}, {hi:.3g}]")
    print("# validation accuracy in the manifest: " + ", ".join(
        f"{n} {manifest.variant(n).metrics.accuracy:.4f}" for n in names if manifest.variant(n).metrics))

    def top1(name: str, xs: np.ndarray) -> np.ndarray:
        v = loaded[name]
        return np.concatenate([np.argmax(v.run([xs[i:i + 60]])[0], axis=-1) for i in range(0, len(xs), 60)])

    head = ["scale", "offset", f"{args.reference} acc"]
    for n in names[1:]:
        head += [f"{n} agreement [{args.confidence:.0%} CI]", f"{n} acc"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    t0 = time.perf_counter()
    for scale in args.scales:
        for offset in args.offsets:
            xs = (x * np.float32(scale) + np.float32(offset)).astype(np.float32)
            preds = {n: top1(n, xs) for n in names}
            ref = preds[args.reference]
            row = [f"{scale:g}", f"{offset:g}", f"{np.mean(ref == y):.3f}"]
            for n in names[1:]:
                k = int(np.sum(preds[n] == ref))
                lo, hi = wilson_interval(k, len(ref), args.confidence)
                row += [f"{k / len(ref):.3f} [{lo:.3f}, {hi:.3f}]", f"{np.mean(preds[n] == y):.3f}"]
            print("| " + " | ".join(row) + " |")
    print(f"# {len(args.scales) * len(args.offsets)} shifts in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
