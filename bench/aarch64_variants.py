"""The variant check of ``bench/aarch64_smoke.sh``: one digits sample through every LiteRT variant.

``pick`` (on the host, where scikit-learn is): write the first validation sample of the demo's
digits data that every LiteRT variant of the repository classifies correctly here, as
``OUT/digit.npy`` (shape (1, H, W, 1), float32), and its label as ``OUT/label.txt``.

``check`` (in the arm64 root, where only the serving dependencies are): load every LiteRT
variant with the daemon's own runtime wrapper and run that sample through it; exit 1, naming the
variant, if one fails to load, fails to run or gives another class than the label. Variants of
another runtime (``float32_tf``: TensorFlow is not installed there) are listed as skipped.

Run as ``python bench/aarch64_variants.py pick|check REPOSITORY DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from adaptd.variants.repository import resolve
from adaptd.variants.runtime import load_variant

MODEL = "digits"


def _classes(repo: Path, x: np.ndarray) -> dict[str, np.ndarray | None]:
    """Each variant's predicted class per row of ``x`` (None: not a LiteRT variant)."""
    version_dir, manifest = resolve(repo, MODEL)
    out: dict[str, np.ndarray | None] = {}
    for record in manifest.variants:
        if record.runtime != "litert":
            out[record.name] = None
            continue
        variant = load_variant(version_dir, record, num_threads=1)
        try:
            out[record.name] = np.array([int(variant.run([x[i:i + 1]])[0].argmax()) for i in range(len(x))])
        finally:
            variant.close()
    return out


def pick(repo: Path, out_dir: Path) -> int:
    from adaptd.variants.demo import digits_dataset

    ds = digits_dataset()
    x, y = ds.x_val[:32].astype(np.float32), ds.y_val[:32].astype(int)
    right = np.ones(len(x), dtype=bool)
    try:
        predicted = _classes(repo, x)
    except Exception as exc:  # noqa: BLE001 - one line: the repository is broken here already
        print(f"{repo}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for classes in predicted.values():
        if classes is not None:
            right &= classes == y
    if not right.any():
        print(f"no one of the first {len(x)} validation samples is classified right by every variant",
              file=sys.stderr)
        return 1
    i = int(np.argmax(right))
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "digit.npy", x[i:i + 1])
    (out_dir / "label.txt").write_text(f"{int(y[i])}\n")
    print(f"input: validation sample {i}, label {int(y[i])} -> {out_dir / 'digit.npy'}")
    return 0


def check(repo: Path, in_dir: Path) -> int:
    x = np.load(in_dir / "digit.npy")
    label = int((in_dir / "label.txt").read_text())
    version_dir, manifest = resolve(repo, MODEL)
    ran = failed = 0
    for record in manifest.variants:
        if record.runtime != "litert":
            print(f"  {record.name:24} skipped ({record.runtime} runtime, not LiteRT)")
            continue
        try:
            variant = load_variant(version_dir, record, num_threads=1)
            try:
                got = int(variant.run([x])[0].argmax())
            finally:
                variant.close()
        except Exception as exc:  # noqa: BLE001 - name the variant and go on to the next
            print(f"  {record.name:24} FAILED: {type(exc).__name__}: {exc}")
            failed += 1
            continue
        ran += 1
        ok = got == label
        failed += not ok
        print(f"  {record.name:24} class {got} (label {label}) {'ok' if ok else 'WRONG'}")
    return 1 if failed or not ran else 0


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("pick", "check"):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        raise SystemExit(2)
    action = pick if sys.argv[1] == "pick" else check
    raise SystemExit(action(Path(sys.argv[2]), Path(sys.argv[3])))
