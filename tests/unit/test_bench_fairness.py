"""The benchmark's fairness scenario: its statistics, report rows and targets, the sampling
while a bulk transfer flows, and the upload (through a minimal SOCKS5 relay to the real
target HTTP server, in-process)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from puretor.bench.clients import CTOR, PURETOR
from puretor.bench.report import (
    FAIR_ROWS,
    ROW_IDS,
    Results,
    labels_for,
    ratio_of_medians,
    table,
)
from puretor.bench.runner import Plan, fetch_during
from puretor.bench.socks import FLOWING_BYTES, Credentials, FetchResult, fetch, upload
from puretor.testnet.targets import SourceLog, TargetHTTPServer, payload

# -- statistics, rows, targets ---------------------------------------------------------------


def test_ratio_of_medians() -> None:
    assert ratio_of_medians([0.03, 0.01, 0.02], [0.01, 0.01, 0.04]) == pytest.approx(2.0)
    assert ratio_of_medians([], [0.01]) is None
    assert ratio_of_medians([0.01], []) is None
    assert ratio_of_medians([0.01], [0.0]) is None


def test_fairness_rows_exist_and_are_labelled() -> None:
    assert set(FAIR_ROWS) <= set(ROW_IDS)
    labels = labels_for(Plan().sizes())
    assert labels["fair_down_ttfb"] == "page TTFB, another circuit gets 100 MiB"
    assert labels["fair_up_ttfb"] == "page TTFB, another circuit sends 100 MiB"
    assert "10 MiB" in labels_for(Plan.quick().sizes())["fair_up_ttfb"]


def _targets(res: Results) -> dict[str, dict[str, object]]:
    return {t["row"]: t for t in res.target_results()}


def test_own_target_compares_puretor_alone() -> None:
    res = Results()
    assert _targets(res)["fair_up_vs_idle"]["result"] == "n/a"
    for v in (1.2, 1.4, 2.0):
        res.add("fair_up_vs_idle", PURETOR, v)
    t = _targets(res)["fair_up_vs_idle"]
    assert (t["result"], t["own"], t["ratio"]) == ("PASS", True, pytest.approx(1.4))
    res.add("fair_up_vs_idle", CTOR, 10.0)  # C tor's own figure does not matter
    assert _targets(res)["fair_up_vs_idle"]["ratio"] == pytest.approx(1.4)
    res.add("fair_up_vs_idle", PURETOR, 1.8)
    assert _targets(res)["fair_up_vs_idle"]["result"] == "MISS"  # median 1.6
    res.fail("fair_up_vs_idle", PURETOR, "run 1: the upload failed")
    assert _targets(res)["fair_up_vs_idle"]["result"] == "MISS"


def test_loaded_ttfb_targets_are_ratios_to_c_tor() -> None:
    res = Results()
    for v in (0.010, 0.020, 0.090):
        res.add("fair_down_ttfb", PURETOR, v)
        res.add("fair_up_ttfb", PURETOR, v * 2)
    for v in (0.030, 0.040, 0.050):
        res.add("fair_down_ttfb", CTOR, v)
        res.add("fair_up_ttfb", CTOR, v)
    t = _targets(res)
    assert (t["fair_down_ttfb"]["result"], t["fair_down_ttfb"]["own"]) == ("PASS", False)
    assert t["fair_down_ttfb"]["ratio"] == pytest.approx(0.5)
    assert t["fair_up_ttfb"]["result"] == "PASS"  # 0.040 / 0.040
    res.add("fair_up_ttfb", PURETOR, 1.0)
    assert _targets(res)["fair_up_ttfb"]["result"] == "MISS"  # 0.11 / 0.04


def test_table_has_the_fairness_section_and_own_verdicts() -> None:
    res = Results()
    for row in FAIR_ROWS:
        res.add(row, PURETOR, 1.25)
        res.add(row, CTOR, 1.0)
    text = table(res, labels_for(Plan().sizes()), ["header"])
    section = text.split("[fairness]\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(section) == len(FAIR_ROWS)
    assert section[0].startswith("page TTFB, warm circuit, idle")
    assert all(line.rstrip().endswith("1.25") for line in section)
    assert re.search(
        r"(?m)^  PASS  fairness: upload TTFB / own idle +<= 1\.50   own   1\.25$", text
    )
    assert re.search(r"(?m)^  MISS  fairness: TTFB under upload +<= 1\.00   ratio 1\.25$", text)


# -- sampling while a bulk transfer flows ---------------------------------------------------


class _Clock:
    """Fake fetches that record when they started."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.starts: list[float] = []

    async def once(self) -> FetchResult:
        self.starts.append(time.perf_counter())
        await asyncio.sleep(self.seconds)
        return FetchResult("http://x/", ok=True, ttfb=self.seconds)


async def _bulk(flowing: asyncio.Event, after: float | None, total: float) -> FetchResult:
    t0 = time.perf_counter()
    if after is not None:
        await asyncio.sleep(after)
        flowing.set()
    await asyncio.sleep(total - (time.perf_counter() - t0))
    return FetchResult("http://x/bulk", ok=True)


def _during(after: float | None, total: float, each: float, n: int) -> tuple[int, list[float]]:
    async def go() -> tuple[int, list[float]]:
        flowing, clock = asyncio.Event(), _Clock(each)
        t0 = time.perf_counter()
        bulk = asyncio.ensure_future(_bulk(flowing, after, total))
        got = await fetch_during(bulk, flowing, clock.once, n)
        await bulk
        return len(got), [s - t0 for s in clock.starts]

    return asyncio.run(go())


def test_fetch_during_stops_after_n() -> None:
    count, starts = _during(after=0.05, total=2.0, each=0.01, n=5)
    assert count == 5
    assert min(starts) >= 0.05  # nothing before the bulk transfer flows


def test_fetch_during_stops_when_the_bulk_transfer_ends() -> None:
    count, starts = _during(after=0.02, total=0.2, each=0.05, n=100)
    assert 1 <= count <= 5
    assert max(starts) < 0.2  # none started after it ended (the last may end after it)


def test_fetch_during_takes_nothing_if_it_never_flowed() -> None:
    assert _during(after=None, total=0.05, each=0.01, n=5) == (0, [])


# -- upload and the flowing signal, through a SOCKS5 relay to the target server ---------------

FILES = {"small": 1000, "big": 3 << 20}


@pytest.fixture
def target(tmp_path: Path) -> Iterator[tuple[str, int]]:
    files = {name: payload(name, size) for name, size in FILES.items()}
    srv = TargetHTTPServer(
        ("127.0.0.1", 0),
        name="http",
        site="unit",
        files=files,
        source_log=SourceLog(tmp_path / "sources.log"),
        tls=None,
    )
    t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    t.start()
    try:
        yield srv.server_address[:2]  # type: ignore[misc]
    finally:
        srv.shutdown()
        srv.server_close()


async def _pipe(rd: asyncio.StreamReader, wr: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await rd.read(65536):
            wr.write(data)
            await wr.drain()
        if wr.can_write_eof():
            wr.write_eof()


async def _with_relay(target: tuple[str, int], body: object) -> object:
    """Run `body(proxy)` with a SOCKS5 proxy (username auth) that connects every request to
    `target`, whatever address it names."""

    async def handle(rd: asyncio.StreamReader, wr: asyncio.StreamWriter) -> None:
        await rd.readexactly(3)  # 05 01 02
        wr.write(b"\x05\x02")
        _, ulen = await rd.readexactly(2)
        await rd.readexactly(ulen)
        await rd.readexactly((await rd.readexactly(1))[0])
        wr.write(b"\x01\x00")
        _, _, _, atyp = await rd.readexactly(4)
        assert atyp == 3
        await rd.readexactly((await rd.readexactly(1))[0] + 2)
        trd, twr = await asyncio.open_connection(*target)
        wr.write(b"\x05\x00\x00\x01" + bytes(6))
        await asyncio.gather(_pipe(rd, twr), _pipe(trd, wr))
        twr.close()
        wr.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        return await body(server.sockets[0].getsockname()[:2])  # type: ignore[operator]
    finally:
        server.close()


BLOCK = bytes(range(256)) * 4096  # 1 MiB


def _upload(target: tuple[str, int], count: int, sha: str) -> tuple[FetchResult, bool]:
    flowing = asyncio.Event()

    async def body(proxy: tuple[str, int]) -> FetchResult:
        return await upload(
            proxy,
            "http://target.test/upload",
            creds=Credentials("u"),
            block=BLOCK,
            count=count,
            expected_sha256=sha,
            timeout=30,
            flowing=flowing,
        )

    res = asyncio.run(_with_relay(target, body))
    assert isinstance(res, FetchResult)
    return res, flowing.is_set()


def test_upload_checks_the_hash_the_target_received(target: tuple[str, int]) -> None:
    sha = hashlib.sha256(BLOCK * 3).hexdigest()
    res, flowed = _upload(target, 3, sha)
    assert (res.ok, res.error, res.status, res.size, res.sha256) == (True, "", 200, 3 << 20, sha)
    assert flowed and res.ttfb is not None and res.total is not None and res.ttfb <= res.total
    res, _ = _upload(target, 3, "0" * 64)
    assert not res.ok and res.hash_mismatch and res.sha256 == sha


def test_upload_below_the_flowing_mark_does_not_signal(target: tuple[str, int]) -> None:
    sha = hashlib.sha256(BLOCK[:1000]).hexdigest()
    flowing = asyncio.Event()

    async def body(proxy: tuple[str, int]) -> FetchResult:
        return await upload(
            proxy,
            "http://target.test/upload",
            creds=Credentials("u"),
            block=BLOCK[:1000],
            count=1,
            expected_sha256=sha,
            flowing=flowing,
        )

    res = asyncio.run(_with_relay(target, body))
    assert isinstance(res, FetchResult) and res.ok
    assert not flowing.is_set()


@pytest.mark.parametrize(("name", "flows"), [("small", False), ("big", True)])
def test_fetch_signals_flowing(target: tuple[str, int], name: str, flows: bool) -> None:
    data = payload(name, FILES[name])
    assert (len(data) >= FLOWING_BYTES) == flows
    flowing = asyncio.Event()

    async def body(proxy: tuple[str, int]) -> FetchResult:
        return await fetch(
            proxy,
            f"http://target.test/files/{name}",
            creds=Credentials("u"),
            expected_sha256=hashlib.sha256(data).hexdigest(),
            expected_size=len(data),
            flowing=flowing,
        )

    res = asyncio.run(_with_relay(target, body))
    assert isinstance(res, FetchResult) and res.ok, res
    assert flowing.is_set() == flows
