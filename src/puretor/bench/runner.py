"""The measurements of one benchmark run, for both clients, alternating.

A run (clients alternate who goes first from run to run; `order` below):

1. cold bootstrap of each client in turn (empty DataDirectory; only that client runs), stop;
2. warm bootstrap of each (same DataDirectory, seconds later); both stay up from here;
3. each scenario, for each client in `order`:
   small      1 MiB GETs: `cold_n` with a new SOCKS username each (a circuit the client has
              not used for anyone else), then `warm_n` on one username after a priming GET
   single     one large GET on a primed username (the circuit is built before timing starts)
   shared     N concurrent GETs with the same (primed) username: one circuit
   isolated   N concurrent GETs, one (primed) username each: N circuits
   onion      the plain onion service's page: the first of the process (no descriptor cached),
              again on the same username (rendezvous circuit reused), then a bulk file
   idle       `idle_n` SOCKS connections CONNECTed to the HTTP target and left silent (the
              server waits for a request that never comes), then `active_n` concurrent 1 MiB
              GETs while they stay open; RSS before/after, and whether all of it survives
4. peak RSS (VmHWM) of each client;
5. the fairness scenario, for each client in `order` (after 4: the upload raises C tor's peak
   RSS): the target's index page on one primed username, a new SOCKS connection each (TTFB of
   interactive traffic): `fair_n` fetches idle, then up to `fair_n` while a `fair_bulk` GET
   runs on another username (another circuit of the same client), then up to `fair_n` while a
   POST of as much to the target's /upload runs on a third. Fetches start once the bulk
   transfer has moved FLOWING_BYTES and stop when it ends; it must complete (the upload: the
   SHA-256 the target received);
6. stop.

CPU seconds are /proc/PID/stat utime+stime deltas of the client process around the transfers
(priming excluded). MB/s are 10^6 bytes per second; GB are 10^9 bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from puretor.bench import procstat
from puretor.bench.clients import CTOR, KINDS, LABELS, PURETOR, BenchClient, ClientError
from puretor.bench.profiling import PySpy
from puretor.bench.report import FAIR_ROWS, ROW_IDS, Results, median_or_none, ratio_of_medians
from puretor.bench.socks import (
    Credentials,
    FetchResult,
    fetch,
    fetch_many,
    socks_connect,
    split_url,
    upload,
)
from puretor.testnet.info import NetworkInfo

MB = 1_000_000
GB = 1_000_000_000


@dataclass(frozen=True)
class Plan:
    runs: int = 3
    small: str = "1MiB"
    # Latencies vary a lot from fetch to fetch on this network (a 40 ms Nagle/delayed-ACK
    # stall between relays hits C tor and puretor alike): enough samples for a median.
    cold_n: int = 5
    warm_n: int = 9
    single: str = "100MiB"
    conc_n: int = 20
    conc: str = "10MiB"
    onion: str = "10MiB"
    idle_n: int = 1000
    active_n: int = 100
    active: str = "1MiB"
    # Two rounds of page fetches under load swung from 0.8x to 1.4x C tor: many per run.
    fair_n: int = 30
    fair_bulk: str = "100MiB"
    micro_mb: float = 20.0
    micro_repeat: int = 3

    @classmethod
    def quick(cls, runs: int = 1) -> Plan:
        return cls(
            runs=runs,
            cold_n=1,
            warm_n=1,
            single="1MiB",
            conc_n=4,
            conc="1MiB",
            onion="1MiB",
            idle_n=50,
            active_n=4,
            fair_n=3,
            fair_bulk="10MiB",
            micro_mb=2.0,
            micro_repeat=1,
        )

    def sizes(self) -> dict[str, str]:
        def h(name: str) -> str:
            return name.replace("MiB", " MiB")

        return {
            "small": h(self.small),
            "single": h(self.single),
            "conc": f"{self.conc_n} x {h(self.conc)}",
            "onion": h(self.onion),
            "idle": str(self.idle_n),
            "active": f"{self.active_n} x {h(self.active)}",
            "fair": h(self.fair_bulk),
        }


def puretor_onion_stub() -> bool:
    """True while puretor's client answers every onion request "not supported yet"."""
    try:
        from puretor.client import TorClient

        return "not supported yet" in inspect.getsource(TorClient._onion_connection)
    except (ImportError, AttributeError, OSError, TypeError):
        return False


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Bench:
    def __init__(
        self,
        info: NetworkInfo,
        plan: Plan,
        workdir: Path,
        results: Results,
        *,
        profile: str | None = None,
        profile_dir: Path | None = None,
        kinds: tuple[str, ...] = KINDS,
        debug_log: bool = False,
    ) -> None:
        self.info, self.plan, self.workdir, self.results = info, plan, workdir, results
        self.profile, self.profile_dir = profile, profile_dir
        self.kinds = kinds
        self.debug_log = debug_log
        self.files = info["targets"]["files"]
        self.boot_url = info["targets"]["base_urls"]["http_host"] + "/"
        self.boot_sha = hashlib.sha256(b"puretor testnet target\n").hexdigest()
        self.onion_url = info["onion"]["plain"]["url"]
        self.onion_sha = hashlib.sha256(info["onion"]["plain"]["index_text"].encode()).hexdigest()
        self.onion_stub = puretor_onion_stub()
        self.upload_url = info["targets"]["upload_urls"]["http_host"]
        self.upload_block = hashlib.shake_256(b"puretor-bench upload").digest(1 << 20)
        self.upload_count = self.files[plan.fair_bulk]["size"] // len(self.upload_block)
        digest = hashlib.sha256()
        for _ in range(self.upload_count):
            digest.update(self.upload_block)
        self.upload_sha = digest.hexdigest()
        self.runs: list[dict[str, Any]] = []
        self.profiles: dict[str, list[Path]] = {}
        self.cprofiles: list[Path] = []

    # ---- helpers ---------------------------------------------------------------------------

    def url(self, name: str) -> str:
        return self.files[name]["urls"]["http_host"]

    async def get(self, c: BenchClient, name: str, user: str, timeout: float) -> FetchResult:
        meta = self.files[name]
        return await fetch(
            c.proxy,
            self.url(name),
            creds=Credentials(user),
            expected_sha256=meta["sha256"],
            expected_size=meta["size"],
            timeout=timeout,
        )

    def check(self, res: FetchResult, rows: tuple[str, ...], kind: str, r: int) -> bool:
        if res.ok:
            return True
        if res.hash_mismatch:
            self.results.hash_failures.append(
                {
                    "run": r,
                    "client": kind,
                    "rows": list(rows),
                    "url": res.url,
                    "sha256": res.sha256,
                    "expected": res.expected_sha256,
                }
            )
        for row in rows:
            self.results.fail(row, kind, f"run {r + 1}: {res.url}: {res.error}")
        return False

    async def prime(self, c: BenchClient, users: list[str], rows: tuple[str, ...], r: int) -> bool:
        """A small GET on each username, so its circuit exists before timing starts."""
        res = await asyncio.gather(
            *(
                fetch(
                    c.proxy,
                    self.boot_url,
                    creds=Credentials(u),
                    expected_sha256=self.boot_sha,
                    timeout=120,
                )
                for u in users
            )
        )
        return all([self.check(x, rows, c.kind, r) for x in res])

    def _spy(self, c: BenchClient, scenario: str, r: int) -> PySpy | None:
        if self.profile != "py-spy" or c.kind != PURETOR or self.profile_dir is None:
            return None
        out = self.profile_dir / f"{scenario}-run{r + 1}.txt"
        self.profiles.setdefault(scenario, []).append(out)
        spy = PySpy(c.pid, out)
        spy.start()
        if spy.error:
            say(f"profile: {spy.error}")
        return spy

    # ---- a run -------------------------------------------------------------------------------

    async def run(self, r: int) -> dict[str, Any]:
        order = self.kinds if r % 2 == 0 else tuple(reversed(self.kinds))
        raw: dict[str, Any] = {"run": r + 1, "order": list(order), "loadavg_start": _loadavg()}
        raw.update({k: {"fetches": {}} for k in order})
        self.runs.append(raw)
        clients: dict[str, BenchClient] = {}
        for k in order:
            cprof = None
            if self.profile == "cprofile" and k == PURETOR and self.profile_dir is not None:
                cprof = self.profile_dir / f"puretor-run{r + 1}"
            clients[k] = BenchClient(
                k, self.workdir / f"run{r + 1}" / k, self.info, cprof, debug_log=self.debug_log
            )
        alive = list(order)
        try:
            for cold in (True, False):
                for k in list(alive):
                    c = clients[k]
                    what = "cold" if cold else "warm"
                    try:
                        boot = await c.start(self.boot_url, fresh=cold)
                    except ClientError as exc:
                        say(f"run {r + 1}: {c.label} {what} start failed: {exc}")
                        for row in ROW_IDS:
                            self.results.fail(row, k, f"run {r + 1}: {what} start failed: {exc}")
                        alive.remove(k)
                        c.stop()
                        continue
                    raw[k][f"boot_{what}"] = boot.to_json()
                    if boot.log_100 is not None:
                        self.results.add(f"boot_{what}_log", k, boot.log_100)
                    if boot.first_fetch is not None:
                        self.results.add(f"boot_{what}_fetch", k, boot.first_fetch)
                    say(
                        f"run {r + 1}: {c.label:7} {what} bootstrap: 100% at "
                        f"{_s(boot.log_100)}, first fetch at {_s(boot.first_fetch)}"
                    )
                    if cold:
                        c.stop()
                        await asyncio.sleep(0.5)
            for k in alive:
                raw[k]["pid"] = clients[k].pid
            scenarios = (
                self.small,
                self.single,
                self.shared,
                self.isolated,
                self.onion_rows,
                self.idle,
                self.peak_memory,
                self.fairness,
            )
            for scenario in scenarios:
                for k in alive:
                    c = clients[k]
                    if not c.is_running():
                        for row in _scenario_rows(scenario.__name__):
                            self.results.fail(row, k, f"run {r + 1}: client died")
                        continue
                    try:
                        await scenario(c, r, raw[k])
                    except Exception as exc:  # one broken scenario must not hide the rest
                        say(f"run {r + 1}: {c.label} {scenario.__name__} crashed: {exc!r}")
                        for row in _scenario_rows(scenario.__name__):
                            self.results.fail(row, k, f"run {r + 1}: {exc!r}")
                    await asyncio.sleep(0.5)
        finally:
            for c in clients.values():
                c.stop()
                if c.cprofile_out is not None:
                    self.cprofiles.append(c.cprofile_out.with_suffix(f".{c.starts}.prof"))
        raw["loadavg_end"] = _loadavg()
        return raw

    async def peak_memory(self, c: BenchClient, r: int, raw: dict[str, Any]) -> None:
        """Peak RSS and the CPU rows. Before `fairness`: its upload raises C tor's VmHWM (by
        10 MiB for a 10 MiB upload), which would change what the peak RSS row measures."""
        mem = c.memory()
        raw["memory_kib_end"] = mem
        self.results.add("peak_rss", c.kind, mem.get("VmHWM", 0) / 1024)
        self._cpu_rows(c.kind, r, raw)
        say(f"run {r + 1}: {c.label:7} peak RSS {mem.get('VmHWM', 0) / 1024:.1f} MiB")

    def _cpu_rows(self, k: str, r: int, raw: dict[str, Any]) -> None:
        cpu = raw.get("cpu", {})

        def per_gb(names: tuple[str, ...]) -> float | None:
            if not all(n in cpu for n in names):
                return None
            secs = sum(cpu[n]["cpu_s"] for n in names)
            nbytes = sum(cpu[n]["bytes"] for n in names)
            return secs / nbytes * GB if nbytes else None

        for row, names in (
            ("cpu_single", ("single",)),
            ("cpu_concurrent", ("shared", "isolated")),
            ("cpu_bulk", ("single", "shared", "isolated")),
        ):
            v = per_gb(names)
            if v is not None:
                self.results.add(row, k, v)
            elif not self.results.cells[row][k].failures:
                self.results.fail(row, k, f"run {r + 1}: a transfer it depends on failed")

    # ---- scenarios ---------------------------------------------------------------------------

    async def small(self, c: BenchClient, r: int, raw: dict[str, Any]) -> None:
        p, k = self.plan, c.kind
        out = raw["fetches"].setdefault("small", [])
        for i in range(p.cold_n):
            res = await self.get(c, p.small, f"cold-{r}-{i}", 120)
            out.append({"kind": "cold", **res.to_json()})
            if self.check(res, ("small_cold_ttfb", "small_cold_total"), k, r):
                assert res.ttfb is not None and res.total is not None
                self.results.add("small_cold_ttfb", k, res.ttfb)
                self.results.add("small_cold_total", k, res.total)
        user = f"warm-{r}"
        if not await self.prime(c, [user], ("small_warm_ttfb", "small_warm_total"), r):
            return
        for _i in range(p.warm_n):
            res = await self.get(c, p.small, user, 120)
            out.append({"kind": "warm", **res.to_json()})
            if self.check(res, ("small_warm_ttfb", "small_warm_total"), k, r):
                assert res.ttfb is not None and res.total is not None
                self.results.add("small_warm_ttfb", k, res.ttfb)
                self.results.add("small_warm_total", k, res.total)
        cold = [x["ttfb"] for x in out if x["kind"] == "cold" and x["ok"]]
        warm = [x["ttfb"] for x in out if x["kind"] == "warm" and x["ok"]]
        say(f"run {r + 1}: {c.label:7} {p.small} TTFB cold {_list(cold)}, warm {_list(warm)}")

    async def single(self, c: BenchClient, r: int, raw: dict[str, Any]) -> None:
        p, k = self.plan, c.kind
        rows = ("single_mbps", "cpu_single", "cpu_bulk")
        user = f"single-{r}"
        if not await self.prime(c, [user], rows, r):
            return
        spy = self._spy(c, "single", r)
        cpu0, sys0 = c.cpu(), procstat.system_jiffies()
        try:
            res = await self.get(c, p.single, user, 900)
        finally:
            cpu1, sys1 = c.cpu(), procstat.system_jiffies()
            if spy is not None:
                spy.stop()
        idle = procstat.idle_fraction(sys0, sys1)
        raw["fetches"]["single"] = res.to_json()
        if not self.check(res, rows, k, r):
            return
        assert res.total is not None
        mbps = res.size / res.total / MB
        self.results.add("single_mbps", k, mbps)
        raw.setdefault("cpu", {})["single"] = {
            "cpu_s": cpu1 - cpu0,
            "bytes": res.size,
            "wall_s": res.total,
            "machine_idle": idle,
        }
        say(
            f"run {r + 1}: {c.label:7} {p.single} single stream: {mbps:.2f} MB/s "
            f"({res.total:.2f} s, client CPU {cpu1 - cpu0:.2f} s, machine idle {_pct(idle)})"
        )

    async def _concurrent(
        self, c: BenchClient, r: int, raw: dict[str, Any], scenario: str, users: list[str]
    ) -> None:
        p, k = self.plan, c.kind
        row = f"conc_{scenario}_mbps"
        rows = (row, "cpu_concurrent", "cpu_bulk")
        if not await self.prime(c, sorted(set(users)), rows, r):
            return
        meta = self.files[p.conc]
        spy = self._spy(c, f"concurrent-{scenario}", r)
        cpu0, sys0 = c.cpu(), procstat.system_jiffies()
        try:
            results, wall = await fetch_many(
                c.proxy,
                self.url(p.conc),
                [Credentials(u) for u in users],
                expected_sha256=meta["sha256"],
                expected_size=meta["size"],
                timeout=900,
            )
        finally:
            cpu1, sys1 = c.cpu(), procstat.system_jiffies()
            if spy is not None:
                spy.stop()
        idle = procstat.idle_fraction(sys0, sys1)
        raw["fetches"][scenario] = [x.to_json() for x in results]
        oks = [self.check(x, rows, k, r) for x in results]
        if not all(oks):
            say(f"run {r + 1}: {c.label:7} {scenario}: {oks.count(False)} of {len(oks)} failed")
            return
        total = sum(x.size for x in results)
        mbps = total / wall / MB
        self.results.add(row, k, mbps)
        raw.setdefault("cpu", {})[scenario] = {
            "cpu_s": cpu1 - cpu0,
            "bytes": total,
            "wall_s": wall,
            "machine_idle": idle,
        }
        times = sorted(x.total or 0.0 for x in results)
        say(
            f"run {r + 1}: {c.label:7} {p.conc_n} x {p.conc} {scenario}: {mbps:.2f} MB/s "
            f"aggregate ({wall:.2f} s, streams {times[0]:.1f}-{times[-1]:.1f} s, "
            f"client CPU {cpu1 - cpu0:.2f} s, machine idle {_pct(idle)})"
        )

    async def shared(self, c: BenchClient, r: int, raw: dict[str, Any]) -> None:
        await self._concurrent(c, r, raw, "shared", [f"shared-{r}"] * self.plan.conc_n)

    async def isolated(self, c: BenchClient, r: int, raw: dict[str, Any]) -> None:
        users = [f"iso-{r}-{i}" for i in range(self.plan.conc_n)]
        await self._concurrent(c, r, raw, "isolated", users)

    async def onion_rows(self, c: BenchClient, r: int, raw: dict[str, Any]) -> None:
        p, k = self.plan, c.kind
        user = Credentials(f"onion-{r}")
        out = raw["fetches"].setdefault("onion", [])
        rows = ("onion_cold_total", "onion_warm_total", "onion_bulk_mbps")
        for row, url, sha, size in (
            ("onion_cold_total", self.onion_url, self.onion_sha, None),
            ("onion_warm_total", self.onion_url, self.onion_sha, None),
            (
                "onion_bulk_mbps",
                self.onion_url + "files/" + p.onion,
                self.files[p.onion]["sha256"],
                self.files[p.onion]["size"],
            ),
        ):
            res = await fetch(
                c.proxy, url, creds=user, expected_sha256=sha, expected_size=size, timeout=300
            )
            out.append({"row": row, **res.to_json()})
            if (
                k == PURETOR
                and not res.ok
                and res.socks_code is not None
                and 0xF0 <= res.socks_code <= 0xF7
                and self.onion_stub
            ):
                for x in rows:
                    self.results.na(x, k, f"unsupported onion: {res.error}")
                say(f"run {r + 1}: {c.label:7} onion: n/a ({res.error})")
                return
            if not self.check(res, (row,), k, r):
                say(f"run {r + 1}: {c.label:7} onion {row} failed: {res.error}")
                continue
            assert res.total is not None
            value = res.size / res.total / MB if row == "onion_bulk_mbps" else res.total
            self.results.add(row, k, value)
        vals = [f"{x['total']:.3f}s" if x["ok"] else "FAIL" for x in out]
        say(f"run {r + 1}: {c.label:7} onion cold/warm/{p.onion}: {' / '.join(vals)}")

    async def idle(self, c: BenchClient, r: int, raw: dict[str, Any]) -> None:
        p, k = self.plan, c.kind
        host, port, _path = split_url(self.info["targets"]["base_urls"]["http_host"] + "/")
        rss0 = procstat.rss_mib(c.pid)
        peak = rss0
        sem = asyncio.Semaphore(100)
        conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        errors: list[str] = []

        async def open_one(i: int) -> None:
            async with sem:
                try:
                    async with asyncio.timeout(120):
                        conns.append(
                            await socks_connect(c.proxy, host, port, Credentials(f"idle-{r}"))
                        )
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

        stop_sampling = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not stop_sampling.is_set():
                with contextlib.suppress(OSError):
                    peak = max(peak, procstat.rss_mib(c.pid))
                with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                    await asyncio.wait_for(stop_sampling.wait(), 0.1)

        sampler = asyncio.ensure_future(sample())
        fds_limit = procstat.fd_limit(c.pid)
        try:
            t0 = time.perf_counter()
            await asyncio.gather(*(open_one(i) for i in range(p.idle_n)))
            open_s = time.perf_counter() - t0
            rss_idle = procstat.rss_mib(c.pid)
            fds = procstat.open_fds(c.pid)
            meta = self.files[p.active]
            results, active_s = await fetch_many(
                c.proxy,
                self.url(p.active),
                [Credentials(f"active-{r}")] * p.active_n,
                expected_sha256=meta["sha256"],
                expected_size=meta["size"],
                timeout=600,
            )
            await asyncio.sleep(0.2)
            still_open = sum(
                1
                for rd, wr in conns
                if not rd.at_eof() and not wr.transport.is_closing() and rd.exception() is None
            )
            rss_after = procstat.rss_mib(c.pid)
        finally:
            for _rd, wr in conns:
                wr.close()
            stop_sampling.set()
            await sampler
        active_ok = 0
        for x in results:
            if x.ok:
                active_ok += 1
            elif x.hash_mismatch:
                self.check(x, ("idle_complete",), k, r)
        peak = max(peak, rss_idle, rss_after)
        complete = 100.0 * (still_open + active_ok) / (p.idle_n + p.active_n)
        raw["idle"] = {
            "idle_requested": p.idle_n,
            "idle_opened": len(conns),
            "idle_still_open": still_open,
            "idle_errors": errors[:10],
            "active_requested": p.active_n,
            "active_ok": active_ok,
            "active_errors": [x.error for x in results if not x.ok][:10],
            "open_s": open_s,
            "active_s": active_s,
            "rss_before_mib": rss0,
            "rss_idle_mib": rss_idle,
            "rss_after_mib": rss_after,
            "rss_peak_mib": peak,
            "client_fds_with_idle": fds,
            "client_fd_limit": fds_limit,
        }
        self.results.add("idle_complete", k, complete)
        self.results.add("idle_rss_growth", k, peak - rss0)
        self.results.add("idle_kib_per_conn", k, (rss_idle - rss0) * 1024 / max(1, p.idle_n))
        if len(conns) == p.idle_n:
            self.results.add("idle_open_s", k, open_s)
        else:
            self.results.fail(
                "idle_open_s",
                k,
                f"run {r + 1}: {p.idle_n - len(conns)} idle connections failed: {errors[:3]}",
            )
        if active_ok == p.active_n:
            self.results.add("idle_active_s", k, active_s)
        else:
            self.results.fail("idle_active_s", k, f"run {r + 1}: {p.active_n - active_ok} failed")
        say(
            f"run {r + 1}: {c.label:7} idle {len(conns)}/{p.idle_n} open in {open_s:.2f} s, "
            f"{still_open} still open; active {active_ok}/{p.active_n} in {active_s:.2f} s; "
            f"RSS {rss0:.1f} -> {rss_idle:.1f} -> peak {peak:.1f} MiB"
        )

    async def fairness(self, c: BenchClient, r: int, raw: dict[str, Any]) -> None:
        p, k = self.plan, c.kind
        page, down_user, up_user = f"fair-{r}", f"fair-down-{r}", f"fair-up-{r}"
        if not await self.prime(c, [page, down_user, up_user], FAIR_ROWS, r):
            return
        out = raw["fairness"] = {"vmhwm_kib_before": c.memory().get("VmHWM")}

        async def once() -> FetchResult:
            return await fetch(
                c.proxy, self.boot_url, creds=Credentials(page), expected_sha256=self.boot_sha
            )

        def ttfbs(results: list[FetchResult], row: str) -> list[float]:
            ok = [x for x in results if self.check(x, (row,), k, r)]
            for x in ok:
                assert x.ttfb is not None
                self.results.add(row, k, x.ttfb)
            return [x.ttfb for x in ok if x.ttfb is not None]

        def download(flowing: asyncio.Event) -> Coroutine[Any, Any, FetchResult]:
            meta = self.files[p.fair_bulk]
            return fetch(
                c.proxy,
                self.url(p.fair_bulk),
                creds=Credentials(down_user),
                expected_sha256=meta["sha256"],
                expected_size=meta["size"],
                timeout=900,
                flowing=flowing,
            )

        def send(flowing: asyncio.Event) -> Coroutine[Any, Any, FetchResult]:
            return upload(
                c.proxy,
                self.upload_url,
                creds=Credentials(up_user),
                block=self.upload_block,
                count=self.upload_count,
                expected_sha256=self.upload_sha,
                timeout=900,
                flowing=flowing,
            )

        idle = out["idle_ttfb"] = ttfbs([await once() for _ in range(p.fair_n)], "fair_idle_ttfb")
        text = [f"idle {_ms(median_or_none(idle))} ({len(idle)})"]
        for what, start, row, vs_row in (
            ("download", download, "fair_down_ttfb", "fair_down_vs_idle"),
            ("upload", send, "fair_up_ttfb", "fair_up_vs_idle"),
        ):
            flowing = asyncio.Event()
            bulk = asyncio.ensure_future(start(flowing))
            try:
                loaded = await fetch_during(bulk, flowing, once, p.fair_n)
                res = await bulk
            finally:
                bulk.cancel()  # only if something above was cancelled or raised
            mbps = res.size / res.total / MB if res.ok and res.total else None
            out[what] = {**res.to_json(), "mb_per_s": mbps, "vmhwm_kib": c.memory().get("VmHWM")}
            if not self.check(res, (row, vs_row), k, r):
                text.append(f"{what} FAILED ({res.error})")
                continue
            ttfb = out[f"{what}_ttfb"] = ttfbs(loaded, row)
            ratio = ratio_of_medians(ttfb, idle)
            if not loaded:
                self.results.fail(row, k, f"run {r + 1}: the {what} ended before any page fetch")
            if ratio is None:
                self.results.fail(vs_row, k, f"run {r + 1}: no figure under {what} or idle")
            else:
                self.results.add(vs_row, k, ratio)
            text.append(
                f"{what} {_ms(median_or_none(ttfb))} ({len(ttfb)}; {p.fair_bulk} at {mbps:.1f} MB/s)"
            )
        say(f"run {r + 1}: {c.label:7} page TTFB medians: {', '.join(text)}")


def _scenario_rows(name: str) -> tuple[str, ...]:
    return {
        "small": ("small_cold_ttfb", "small_cold_total", "small_warm_ttfb", "small_warm_total"),
        "single": ("single_mbps",),
        "shared": ("conc_shared_mbps",),
        "isolated": ("conc_isolated_mbps",),
        "onion_rows": ("onion_cold_total", "onion_warm_total", "onion_bulk_mbps"),
        "idle": (
            "idle_open_s",
            "idle_rss_growth",
            "idle_kib_per_conn",
            "idle_active_s",
            "idle_complete",
        ),
        "peak_memory": ("peak_rss",),
        "fairness": FAIR_ROWS,
    }.get(name, ())


async def fetch_during(
    bulk: asyncio.Future[FetchResult],
    flowing: asyncio.Event,
    once: Callable[[], Awaitable[FetchResult]],
    n: int,
) -> list[FetchResult]:
    """Up to `n` calls of `once`, one after another, each started after `flowing` is set and
    before `bulk` is done (one that ends after `bulk` still counts)."""
    waiter: asyncio.Future[Any] = asyncio.ensure_future(flowing.wait())
    await asyncio.wait({waiter, bulk}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    out: list[FetchResult] = []
    while flowing.is_set() and not bulk.done() and len(out) < n:
        out.append(await once())
    return out


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _pct(x: float | None) -> str:
    return "?" if x is None else f"{x * 100:.0f}%"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.1f} ms"


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}s"


def _list(xs: list[float]) -> str:
    return "[" + ", ".join(f"{x:.3f}" for x in xs) + "]"


__all__ = ["Bench", "Plan", "CTOR", "LABELS"]
