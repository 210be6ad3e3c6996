"""Shared helpers for the directory tests: vector files and small signed synthetic networks."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from puretor.dir.synth import SynthNetwork, synth_network

DATA = Path(__file__).parent / "data"


def data(name: str) -> bytes:
    return (DATA / name).read_bytes()


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[arg-type,misc,unused-ignore]


# arti-dirmgr-mdconsensus1.txt: valid-after 2020-08-07 12:42:40, valid-until 12:43:20.
MD1_NOW = ts(2020, 8, 7, 12, 42, 45)
MD1_AUTHS = [
    bytes.fromhex("5696AB38CB3852AFA476A5C07B2D4788963D5567"),
    bytes.fromhex("5A23BA701776C9C1AB1C06E734E92AB3D5350D64"),
    bytes.fromhex("7C47DCB4A90E2C2B7C7AD27BD641D038CF5D7EBE"),
]
# arti-testdata2-cached-microdesc-consensus: valid-after 2000-01-01 00:02:20.
TD2_NOW = ts(2000, 1, 1, 0, 2, 30)


@cache
def small_network(n_relays: int = 300, seed: int = 7, n_authorities: int = 5) -> SynthNetwork:
    return synth_network(n_relays, seed, n_authorities=n_authorities)
