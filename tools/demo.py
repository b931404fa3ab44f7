"""``adaptd demo run``: the main job end to end, for a first look at adaptd.

Builds the demo model's variants if the repository has none, starts a real daemon on them
(its sockets and selection store under ``--workdir``), sends a few requests with different
constraints through the client library over the daemon's local stream (as an app on the board
would), prints what the daemon chose for each and why, and
stops the daemon. Energy on a machine without power sensors is labelled ``estimated``.
"""

from __future__ import annotations

from pathlib import Path

REQUESTS = (
    ("no constraint, fastest", {}, "latency"),
    ("accuracy >= 0.97, least energy", {"min_accuracy": 0.97}, "energy"),
    ("latency <= 2 ms, most accurate", {"max_latency_ms": 2.0}, "accuracy"),
    ("energy <= 0.5 mJ, fastest", {"max_energy_mj": 0.5}, "latency"),
)


def _has_model(repo: Path, name: str) -> bool:
    return any(p.is_dir() and p.name.isdigit() and (p / "manifest.json").exists()
               for p in (repo / name).glob("*"))


def run_demo(repository: Path, workdir: Path, progress: bool = True) -> None:
    """Build (once), serve, ask and explain, printing each step (see the module docstring)."""
    from adaptd.clients.client import Client
    from adaptd.clients.errors import AdaptdError
    from adaptd.tools.launch import DaemonProcess
    from adaptd.variants.demo import MODEL_NAME, build_demo, digits_dataset

    repo = Path(repository)
    if not _has_model(repo, MODEL_NAME):
        print(f"building the demo model's variants into {repo} (once; takes a minute or two) ...")
        build_demo(repo, progress=progress)
    ds = digits_dataset()
    image, label = ds.x_val[:1], int(ds.y_val[0])

    print(f"starting the daemon on {repo} ...")
    with DaemonProcess.start(repo, Path(workdir), config={"placements": {"load": "eager"}}) as daemon:
        endpoint = daemon.local_endpoint or daemon.endpoint
        print(f"daemon ready at {endpoint} (selection store: {daemon.store_path})\n")
        with Client(endpoint, timeout_ms=30_000) as client:
            for title, constraints, objective in REQUESTS:
                try:
                    result = client.infer(MODEL_NAME, image, objective=objective, on_infeasible="best_effort",
                                          **constraints)
                except AdaptdError as exc:
                    print(f"{title}\n  -> error {exc.code}: {exc}\n")
                    continue
                sel = result.selection
                digit = int(result.outputs[0].argmax())
                print(f"{title}\n"
                      f"  -> {sel.variant} on {sel.placement}: digit {digit} (label {label}); "
                      f"total {sel.timing.total_ms:.2f} ms, compute {sel.timing.compute_ms:.3f} ms, "
                      f"energy {sel.energy.describe()}\n"
                      f"     constraints met: {sel.met} {sel.constraints_met or ''}; "
                      f"reason [{sel.reason.code}] {sel.reason.text}\n")
            explanation = client.explain(MODEL_NAME, min_accuracy=0.97, objective="energy")
            feasible = [a for a in explanation.alternatives if not a.get("excluded_by")]
            print(f"dry run (accuracy >= 0.97, least energy): would run {explanation.variant} on "
                  f"{explanation.placement}; {len(feasible)} of {len(explanation.alternatives)} arms feasible")
    print("\ndaemon stopped. Next: `adaptd report --store "
          f"{daemon.store_path} --out report/` for plots of these selections.")
