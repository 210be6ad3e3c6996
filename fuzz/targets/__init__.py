"""The fuzz targets: one module per parser, each defining ``TARGET``.

Modules are imported lazily (`load`) so that the atheris runner can instrument
``puretor`` before any of it is imported.
"""

from __future__ import annotations

import importlib

from fuzz.harness import Target

# name -> module; the order is the order `run.py all` uses.
TARGETS: dict[str, str] = {
    "socks": "fuzz.targets.socks",
    "cells": "fuzz.targets.cells",
    "relaymsg": "fuzz.targets.relaymsg",
    "certs": "fuzz.targets.certs",
    "channel": "fuzz.targets.channel",
    "conflux": "fuzz.targets.conflux",
    "netdoc": "fuzz.targets.netdoc",
    "consensus": "fuzz.targets.consensus",
    "authcerts": "fuzz.targets.authcerts",
    "microdescs": "fuzz.targets.microdescs",
    "http": "fuzz.targets.http",
    "onion_address": "fuzz.targets.onion_address",
    "hs_descriptor": "fuzz.targets.hs_descriptor",
    "hs_service": "fuzz.targets.hs_service",
    "http_connect": "fuzz.targets.http_connect",
    "dns": "fuzz.targets.dns",
    "control": "fuzz.targets.control",
}


def load(name: str) -> Target:
    if name not in TARGETS:
        raise KeyError(f"unknown fuzz target {name!r}; known: {', '.join(TARGETS)}")
    target: Target = importlib.import_module(TARGETS[name]).TARGET
    return target
