"""Variants loaded on first use (``[placements] load = "lazy"``): a request whose chosen arm is not
loaded yet is served by the best loaded arm that meets it, and the chosen one loads in the
background, so no request waits for a model load that no estimate includes; once it is loaded,
it is chosen. A real daemon with its real placement threads (the tiny CNN's repository)."""

from __future__ import annotations

import numpy as np

from adaptd.clients.client import Client
from adaptd.tools.launch import DaemonProcess

from .conftest import wait_until


def loaded(client: Client, variant: str, placement: str) -> bool:
    arm = next(a for a in client.stats()["arms"] if a["variant"] == variant and a["placement"] == placement)
    return bool(arm["loaded"])


def test_an_unloaded_choice_is_served_by_a_loaded_arm_while_it_loads(tiny_repository, tmp_path):
    repo, model, _ = tiny_repository
    config = {"placements": {"load": "lazy", "tensorflow": "off"}, "fidelity": {"enabled": False}}
    with DaemonProcess.start(repo, tmp_path / "d", config=config) as d, Client(d.endpoint) as client:
        entry = next(m for m in client.models()["models"] if m["name"] == model)
        accuracy = {v["name"]: v["accuracy"] for v in entry["variants"] if v["servable"]}
        shape = [1, *entry["variants"][0]["inputs"][0]["shape"][1:]]
        x = np.zeros(shape, np.float32)
        best = client.explain(model, objective="accuracy")   # the most accurate arm: the choice
        assert best.feasible and not loaded(client, best.variant, best.placement)
        # another arm, of a less accurate variant (it can never become the most accurate one) on
        # another placement (a load holds its placement: a job there would wait behind it), loaded
        other = min(accuracy, key=lambda v: accuracy[v])
        assert accuracy[other] < accuracy[best.variant]
        elsewhere = next(p["name"] for p in client.placements()["placements"]
                         if p["runtime"] == "litert" and p["name"] != best.placement)
        client.infer(model, [x], variant=other, placement=elsewhere)
        assert loaded(client, other, elsewhere)

        served = client.infer(model, [x], objective="accuracy").selection
        assert (served.variant, served.placement) == (other, elsewhere)   # the only loaded arm
        assert f"{best.variant} on {best.placement} was chosen first and is loading" in served.reason.text
        wait_until(lambda: loaded(client, best.variant, best.placement), "the background load")

        served = client.infer(model, [x], objective="accuracy").selection
        assert (served.variant, served.placement) == (best.variant, best.placement)
        assert "is loading" not in served.reason.text


def test_with_no_loaded_arm_elsewhere_the_choice_stands_and_pays_the_load(tiny_repository, tmp_path):
    """Nothing loaded; then only an arm on the chosen arm's own placement, which its load would
    hold: the request is run on the chosen arm, which loads for it."""
    repo, model, _ = tiny_repository
    config = {"placements": {"load": "lazy", "tensorflow": "off"}, "fidelity": {"enabled": False}}
    with DaemonProcess.start(repo, tmp_path / "d", config=config) as d, Client(d.endpoint) as client:
        entry = next(m for m in client.models()["models"] if m["name"] == model)
        accuracy = {v["name"]: v["accuracy"] for v in entry["variants"] if v["servable"]}
        x = np.zeros([1, *entry["variants"][0]["inputs"][0]["shape"][1:]], np.float32)
        best = client.explain(model, objective="accuracy")
        other = min(accuracy, key=lambda v: accuracy[v])
        client.infer(model, [x], variant=other, placement=best.placement)   # same placement as the choice
        served = client.infer(model, [x], objective="accuracy").selection
        assert (served.variant, served.placement) == (best.variant, best.placement)
        assert "is loading" not in served.reason.text and loaded(client, best.variant, best.placement)
