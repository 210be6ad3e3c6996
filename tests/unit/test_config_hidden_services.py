"""HiddenServiceDir and the per-service options after it (C tor's grouping rules)."""

from __future__ import annotations

from pathlib import Path

import pytest

from puretor.config import TorConfig
from puretor.config.options import parse_hs_port
from puretor.errors import ConfigError


def test_port_targets() -> None:
    assert parse_hs_port("80") == (80, ("127.0.0.1", 80))
    assert parse_hs_port("80 8080") == (80, ("127.0.0.1", 8080))
    assert parse_hs_port("80 10.0.0.1:81") == (80, ("10.0.0.1", 81))
    assert parse_hs_port("80 10.0.0.1") == (80, ("10.0.0.1", 80))
    assert parse_hs_port("80 [::1]:81") == (80, ("::1", 81))
    assert parse_hs_port("22 unix:/run/ssh.sock") == (22, Path("/run/ssh.sock"))
    for bad in ("0", "70000 1", "80 example.com:80", "80 1.2.3.4:0", "80 unix:", "a b c"):
        with pytest.raises(ValueError):
            parse_hs_port(bad)


def test_options_group_under_the_directory_before_them(tmp_path: Path) -> None:
    torrc = tmp_path / "torrc"
    torrc.write_text(
        "HiddenServiceDir /tmp/a\nHiddenServicePort 80 8080\nHiddenServiceMaxStreams 3\n"
        "HiddenServiceMaxStreamsCloseCircuit 1\nHiddenServiceVersion 3\n"
        "HiddenServiceDir /tmp/b\nHiddenServicePort 81\nHiddenServiceNumIntroductionPoints 5\n"
    )
    a, b = TorConfig.from_torrc(torrc).hidden_services
    assert a.directory == Path("/tmp/a") and a.ports == ((80, ("127.0.0.1", 8080)),)
    assert a.max_streams == 3 and a.max_streams_close_circuit and a.num_intro_points == 3
    assert b.directory == Path("/tmp/b") and b.num_intro_points == 5 and b.max_streams == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"HiddenServicePort": "80"}, "no preceding HiddenServiceDir"),
        ({"HiddenServiceDir": "/tmp/a"}, "has no HiddenServicePort"),
        ({"HiddenServiceDir": "/tmp/a", "HiddenServicePort": "80", "HiddenServiceVersion": "2"},
         "only version 3"),
        ({"HiddenServiceDir": "/tmp/a", "HiddenServicePort": "80",
          "HiddenServiceNumIntroductionPoints": "21"}, "1-20"),
        ({"HiddenServiceDir": "/tmp/a", "HiddenServicePort": ["80 1", "80 2"]}, "several targets"),
        ({"HiddenServiceDir": "/tmp/a", "HiddenServicePort": "80",
          "HiddenServiceSingleHopMode": "1"}, "not supported by puretor"),
    ],
)  # fmt: skip
def test_refusals(options: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TorConfig.from_options(**options)
