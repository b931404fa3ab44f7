"""Variants loaded on first use (``[placements] load = "lazy"``): a request whose chosen arm is not
loaded yet is served by the best loaded arm that meets it on another placement (a load holds its
own), and the chosen one loads in the background, so no request waits for a model load that no
estimate includes; a load lost to a worker's restart is asked for again. A real daemon with its
real placement threads or worker processes (the tiny CNN's repository)."""

from __future__ import annotations

import os
import re
import signal

import numpy as np

from adaptd.clients.client import Client
from adaptd.tools.launch import DaemonProcess

from .conftest import wait_until

CHOSEN_FIRST = re.compile(r"(\S+) on (\S+) was chosen first and is loading")


def loaded(client: Client, variant: str, placement: str) -> bool:
    arm = next(a for a in client.stats()["arms"] if a["variant"] == variant and a["placement"] == placement)
    return bool(arm["loaded"])


def setup(client: Client, model: str):
    """The model's input, the most accurate variant (what an accuracy request chooses, on one of
    its placements) and the least accurate one, loaded on every placement: whichever placement
    the choice is on, a loaded arm waits on another."""
    entry = next(m for m in client.models()["models"] if m["name"] == model)
    accuracy = {v["name"]: v["accuracy"] for v in entry["variants"] if v["servable"]}
    x = np.zeros([1, *entry["variants"][0]["inputs"][0]["shape"][1:]], np.float32)
    best, other = max(accuracy, key=accuracy.get), min(accuracy, key=accuracy.get)
    assert accuracy[other] < accuracy[best]
    placements = [p["name"] for p in client.placements()["placements"] if p["runtime"] == "litert"]
    for placement in placements:
        client.infer(model, [x], variant=other, placement=placement)
    return x, best, other, placements


def served_meanwhile(client: Client, model: str, x: np.ndarray, best: str, other: str) -> tuple[str, str]:
    """An accuracy request: served by a loaded arm of ``other`` on a placement other than the one
    the chosen arm (of ``best``, not loaded) is loading on; returns that chosen arm."""
    served = client.infer(model, [x], objective="accuracy").selection
    match = CHOSEN_FIRST.search(served.reason.text)
    assert match, served.reason.text
    chosen = (match.group(1), match.group(2))
    assert chosen[0] == best   # (not loaded when the request came; it may be by now: a tiny model loads in ms)
    assert served.variant == other and served.placement != chosen[1]
    return chosen


def test_an_unloaded_choice_is_served_by_a_loaded_arm_while_it_loads(tiny_repository, tmp_path):
    repo, model, _ = tiny_repository
    config = {"placements": {"load": "lazy", "tensorflow": "off"}, "fidelity": {"enabled": False}}
    with DaemonProcess.start(repo, tmp_path / "d", config=config) as d, Client(d.endpoint) as client:
        x, best, other, _ = setup(client, model)
        chosen = served_meanwhile(client, model, x, best, other)
        wait_until(lambda: loaded(client, *chosen), "the background load")
        served = client.infer(model, [x], objective="accuracy").selection
        assert served.variant == best   # loaded now: chosen (or, on a tie, another of its arms)
        assert not CHOSEN_FIRST.search(served.reason.text) or CHOSEN_FIRST.search(served.reason.text).group(1) == best


def test_with_no_loaded_arm_elsewhere_the_choice_stands_and_pays_the_load(tiny_repository, tmp_path):
    """Nothing loaded; then only an arm on the chosen arm's own placement, which its load would
    hold: the request is run on the chosen arm, which loads for it."""
    repo, model, _ = tiny_repository
    config = {"placements": {"load": "lazy", "tensorflow": "off"}, "fidelity": {"enabled": False}}
    with DaemonProcess.start(repo, tmp_path / "d", config=config) as d, Client(d.endpoint) as client:
        entry = next(m for m in client.models()["models"] if m["name"] == model)
        x = np.zeros([1, *entry["variants"][0]["inputs"][0]["shape"][1:]], np.float32)
        served = client.infer(model, [x], objective="accuracy").selection   # nothing is loaded yet
        assert not CHOSEN_FIRST.search(served.reason.text) and loaded(client, served.variant, served.placement)


def test_a_background_load_lost_to_a_worker_restart_is_asked_for_again(tiny_repository, tmp_path):
    """Process placements: the worker that loaded the chosen arm in the background is killed; its
    replacement has nothing loaded, and requests are again served from a loaded arm while their
    choice loads (the placement is not taken for loading for good; tests/test_pool_pipeline.py
    checks the worker pool's side: a background load is not redone by a new worker, and is
    sent again when asked for)."""
    repo, model, _ = tiny_repository
    config = {"placements": {"load": "lazy", "tensorflow": "off", "isolation": "process"},
              "fidelity": {"enabled": False}}
    with DaemonProcess.start(repo, tmp_path / "d", config=config) as d, Client(d.endpoint) as client:
        x, best, other, _ = setup(client, model)

        def worker(placement: str) -> dict:
            return next(p for p in client.placements()["placements"] if p["name"] == placement)

        chosen = served_meanwhile(client, model, x, best, other)
        wait_until(lambda: loaded(client, *chosen), "the background load")
        pid = worker(chosen[1])["worker_pid"]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: worker(chosen[1])["worker_pid"] not in (None, pid) and worker(chosen[1])["ready"],
                   "the replacement worker")
        # the replacement has lost the arm of "other" there too: load it again, then the same choice
        assert not loaded(client, *chosen)   # lost with the worker, and nothing asked for it since
        client.infer(model, [x], variant=other, placement=chosen[1])
        again = served_meanwhile(client, model, x, best, other)   # that arm, or another of its variant
        wait_until(lambda: loaded(client, *again), "the background load after the restart")
