"""The V3BandwidthsFile we give the authorities (bandwidth-file-spec 1.4.0)."""

from __future__ import annotations

from puretor.testnet import bwfile

M = [
    bwfile.Measurement("ab" * 20, "guard1", 12000),
    bwfile.Measurement("CD" * 20, "exit1", 4000),
]


def test_layout() -> None:
    text = bwfile.render(M, now=1_700_000_000)
    lines = text.splitlines()
    assert lines[0] == "1700000000"  # first line: the timestamp alone
    assert "version=1.4.0" in lines
    assert lines.index("=====") < lines.index(next(x for x in lines if x.startswith("bw=")))
    relay_lines = [x for x in lines if x.startswith("bw=")]
    assert relay_lines[0].split()[:3] == ["bw=12000", f"node_id=${'AB' * 20}", "nick=guard1"]
    assert text.endswith("\n")
    for line in lines[1 : lines.index("=====")]:
        assert line.count("=") == 1 and " " not in line  # header: one key=value per line


def test_round_trip() -> None:
    ts, header, measured = bwfile.parse(bwfile.render(M, now=1_700_000_000))
    assert ts == 1_700_000_000
    assert header["version"] == "1.4.0"
    assert header["file_created"] == "2023-11-14T22:13:20"
    assert measured == {"AB" * 20: 12000, "CD" * 20: 4000}
