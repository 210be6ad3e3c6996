"""Onion services hosted by puretor (tor-client from torrc, and the library), reached by
the network's C tor client and by puretor, on the private network."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import socketserver
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from onion_helpers import http_get, make_config
from ptclient import start_tor_client

from puretor import TorClient
from puretor.aio.hsclient import _intro_hop
from puretor.errors import StreamRefused
from puretor.hs.client import plan_descriptor_fetch, rp_link_specifiers
from puretor.hs.ntor import build_introduce1
from puretor.path.select import PathRequest
from puretor.proto.relaymsg import EndReason, RelayCommand
from puretor.testnet import start_ctor_client
from puretor.testnet.ctor_client import CurlError
from puretor.testnet.targets import payload

pytestmark = pytest.mark.testnet

MIB10 = 10 * 1024 * 1024
INDEX = b"served by a puretor onion service\n"


class _Handler(BaseHTTPRequestHandler):
    big = b""

    def do_GET(self) -> None:  # noqa: N802
        body = INDEX if self.path == "/" else self.big if self.path == "/files/10MiB" else None
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def backend() -> Iterator[tuple[str, int]]:
    """The service's local web server (127.0.0.1, shared by this namespace's processes)."""
    _Handler.big = payload("10MiB", MIB10)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[:2]  # type: ignore[misc]
    finally:
        server.shutdown()
        server.server_close()


def _ctor_fetch(ctor_client: Any, address: str, want: str) -> float:
    """Page and 10 MiB (sha256 checked) through the C tor client; seconds for the 10 MiB."""
    assert ctor_client.curl(f"http://{address}/") == INDEX
    t0 = time.monotonic()
    body = ctor_client.curl(f"http://{address}/files/10MiB")
    took = time.monotonic() - t0
    assert len(body) == MIB10 and hashlib.sha256(body).hexdigest() == want
    return took


def _ctor_made_service_dir(info: Any, workdir: Path) -> str:
    """A HiddenServiceDir made (or read) by C tor: it loads or writes the keys at start-up
    and writes ``hostname``; DisableNetwork keeps it from publishing anything.  Then C tor
    is stopped.  Returns the address in ``hostname``."""
    hs_dir = workdir / "hs"
    ctor = start_ctor_client(
        info,
        workdir / "ctor",
        client_auth=False,
        wait=False,
        extra_torrc=[
            "DisableNetwork 1",
            f"HiddenServiceDir {hs_dir}",
            "HiddenServicePort 80 127.0.0.1:9",
        ],
    )
    try:
        deadline = time.monotonic() + 30
        while not (hs_dir / "hostname").exists():
            assert time.monotonic() < deadline, "C tor did not write the service directory"
            time.sleep(0.1)
        time.sleep(0.5)  # (the key files are written before hostname)
    finally:
        ctor.stop()
    return (hs_dir / "hostname").read_text().strip()


@pytest.mark.options(
    "HiddenServiceDir",
    "HiddenServicePort",
    "HiddenServiceVersion",
    "HiddenServiceNumIntroductionPoints",
)
def test_torrc_service_from_a_ctor_directory_survives_a_restart(
    testnet: Any, ctor_client: Any, backend: tuple[str, int], tmp_path: Path
) -> None:
    info = testnet.info
    want = info["targets"]["files"]["10MiB"]["sha256"]
    address = _ctor_made_service_dir(info, tmp_path)
    hs_dir = tmp_path / "hs"
    options = [
        f"HiddenServiceDir {hs_dir}",
        f"HiddenServicePort 80 {backend[0]}:{backend[1]}",
        "HiddenServiceVersion 3",
        "HiddenServiceNumIntroductionPoints 2",
    ]
    timings = {}
    log = tmp_path / "daemon" / "tor-client.log"
    for run in ("first", "restarted"):
        since = len(log.read_text()) if log.exists() else 0  # (the log is appended to)
        t0 = time.monotonic()
        daemon = start_tor_client(info, tmp_path / "daemon", extra_options=options)
        try:
            daemon.wait_for_log(r"descriptors published", since=since, timeout=120)
            published = time.monotonic() - t0
            # C tor's directory, C tor's address: nothing was rewritten.
            assert (hs_dir / "hostname").read_text().strip() == address
            assert daemon.log_text()[since:].count("introduction point ") >= 2
            if run == "restarted":
                # The C tor client still holds the first run's descriptor, whose intro
                # points are gone: its first attempt may fail on them (INTRODUCE_ACK
                # refusals), after which it fetches the new descriptor.  Same with a
                # restarted C tor service.
                for _attempt in range(3):
                    try:
                        ctor_client.curl(f"http://{address}/")
                        break
                    except CurlError:
                        time.sleep(1)
            took = _ctor_fetch(ctor_client, address, want)
            timings[run] = (published, took)
        finally:
            daemon.stop()
    # The same 10 MiB from the network's C tor-hosted service, same C tor client.
    plain = info["onion"]["plain"]["address"]
    t0 = time.monotonic()
    body = ctor_client.curl(f"http://{plain}/files/10MiB")
    ctor_took = time.monotonic() - t0
    assert hashlib.sha256(body).hexdigest() == want
    print(f"torrc service: (published s, 10 MiB s) {timings}; C tor-hosted 10 MiB {ctor_took:.2f}s")


@pytest.mark.options("HiddenServiceMaxStreams", "HiddenServiceMaxStreamsCloseCircuit")
def test_library_service_ctor_and_puretor_clients_and_hostile_introductions(
    testnet: Any, ctor_client: Any, backend: tuple[str, int], tmp_path: Path
) -> None:
    info = testnet.info
    want = info["targets"]["files"]["10MiB"]["sha256"]

    async def main() -> None:
        async with TorClient(make_config(info, tmp_path / "data")) as tor:
            t0 = time.monotonic()
            async with tor.onion_service({80: backend}, max_streams=2) as svc:
                await svc.wait_published(120)
                print(f"library service published in {time.monotonic() - t0:.1f}s")
                took = await asyncio.to_thread(_ctor_fetch, ctor_client, svc.address, want)
                print(f"C tor client: 10 MiB from the library service in {took:.1f}s")

                # A puretor client (this same TorClient) reaches the puretor service, with
                # congestion control on the virtual hop (the descriptor offers it).
                status, body = await http_get(tor, svc.address, "/")
                assert status == 200 and body == INDEX
                status, body = await http_get(tor, svc.address, "/files/10MiB")
                assert status == 200 and hashlib.sha256(body).hexdigest() == want
                _, writer = await tor.open_connection(svc.address, 80)
                tunnel = writer.get_extra_info("circuit").tunnel
                assert tunnel.cc is not None and tunnel.circuit.hops[3].cc is tunnel.cc
                writer.close()

                # HiddenServiceMaxStreams 2: a third stream on one rendezvous circuit is
                # refused with END DONE, as C tor does (MaxStreamsCloseCircuit 0: the
                # service keeps the circuit; our client drops it after a refusal).
                iso = tor.isolated("max-streams")
                conns = [await tor.open_connection(svc.address, 80, isolation=iso) for _ in "ab"]
                with pytest.raises(StreamRefused) as refused:
                    await tor.open_connection(svc.address, 80, isolation=iso)
                assert refused.value.reason == EndReason.DONE
                for _, w in conns:
                    w.close()

                await _hostile_introductions(tor, svc)
                stats = svc.stats
                assert stats["rejected"] >= 2 and stats["replays"] >= 1, stats
                # ... and the service keeps serving others.
                assert await asyncio.to_thread(ctor_client.curl, f"http://{svc.address}/") == (
                    INDEX
                )

        # A service from torrc options with HiddenServiceMaxStreams 1 and
        # HiddenServiceMaxStreamsCloseCircuit 1: the stream past the limit closes the
        # whole rendezvous circuit.
        hs_options = [
            "--HiddenServiceDir",
            str(tmp_path / "hs-close"),
            "--HiddenServicePort",
            f"80 {backend[0]}:{backend[1]}",
            "--HiddenServiceMaxStreams",
            "1",
            "--HiddenServiceMaxStreamsCloseCircuit",
            "1",
        ]
        async with TorClient(make_config(info, tmp_path / "data2", *hs_options)) as tor:
            (svc,) = tor.onion_services
            deadline = time.monotonic() + 120
            while not svc.is_published:
                assert time.monotonic() < deadline, "torrc service not published"
                await asyncio.sleep(0.1)
            iso = tor.isolated("close")
            _, w1 = await tor.open_connection(svc.address, 80, isolation=iso)
            circuit = w1.get_extra_info("circuit")
            # (The client may retry on a new rendezvous circuit after the DESTROY.)
            with contextlib.suppress(StreamRefused):
                _, w2 = await tor.open_connection(svc.address, 80, isolation=iso)
                w2.close()
            await asyncio.wait_for(circuit.closed.wait(), 30)
            reason = circuit.tunnel.closed_reason
            assert reason is not None and reason.remote, reason

    asyncio.run(main())


async def _hostile_introductions(tor: TorClient, svc: Any) -> None:
    """Garbage INTRODUCE1s (relayed as INTRODUCE2 by the intro point: it only checks
    the auth key) and one valid INTRODUCE1 sent twice (a replay)."""
    netdir = tor._dirmgr.require_netdir()
    plan = plan_descriptor_fetch(netdir, svc.address, testing_network=True)
    from puretor.aio.hsclient import OnionClient

    onion = OnionClient(tor.config, tor._dirmgr, tor._circmgr)  # type: ignore[arg-type]
    desc = await onion._descriptor(svc.address, plan)
    ip = desc.intro_points[0]
    circmgr = tor._circmgr
    assert circmgr is not None
    rp = circmgr._selector(netdir).choose_last_hop_internal(PathRequest(internal=True))
    header = bytes(20) + b"\x02\x00\x20" + ip.auth_key + b"\x00"
    _, valid = build_introduce1(
        ip.auth_key,
        ip.enc_key,
        plan.subcredential,
        bytes(20),  # a cookie no rendezvous point knows: the service's attempt fails
        rp.ntor_key or b"",
        rp_link_specifiers(rp),
    )
    # An intro point takes one INTRODUCE1 per circuit: a circuit for each.
    for body in (header + bytes(200), header + b"\xff" * 300, valid, valid):
        intro = await circmgr.build_internal_circuit(last=_intro_hop(ip))
        try:
            intro.send_relay(RelayCommand.INTRODUCE1, 0, body)
            ack = await intro.next_control_cell(30)
            assert ack.command == RelayCommand.INTRODUCE_ACK
        finally:
            intro.close()
    deadline = time.monotonic() + 10
    while svc.stats["replays"] < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


def test_client_authorization(
    testnet: Any, ctor_client: Any, backend: tuple[str, int], tmp_path: Path
) -> None:
    """Only clients with an authorized x25519 key read the descriptor: puretor and C tor
    with the key reach the service, C tor without it cannot."""
    info = testnet.info
    client_key = X25519PrivateKey.generate()
    private_b32 = base64.b32encode(client_key.private_bytes_raw()).decode().rstrip("=")
    public = client_key.public_key().public_bytes_raw()
    auth_dir = tmp_path / "onion-auth"
    auth_dir.mkdir(mode=0o700)
    config = make_config(info, tmp_path / "data", "--ClientOnionAuthDir", str(auth_dir))

    async def main() -> None:
        async with TorClient(config) as tor:
            svc = tor.onion_service({80: backend}, authorized_clients=[public])
            line = f"{svc.address.removesuffix('.onion')}:descriptor:x25519:{private_b32}\n"
            (auth_dir / "svc.auth_private").write_text(line)
            async with svc:
                await svc.wait_published(120)
                status, body = await http_get(tor, svc.address, "/")
                assert status == 200 and body == INDEX
                # The session's C tor client has no key for it.
                with pytest.raises(CurlError):
                    await asyncio.to_thread(ctor_client.curl, f"http://{svc.address}/")
                # A C tor client with the key.
                keyed_dir = tmp_path / "ctor-auth"
                keyed_dir.mkdir(mode=0o700)
                (keyed_dir / "svc.auth_private").write_text(line)
                keyed = await asyncio.to_thread(
                    start_ctor_client,
                    info,
                    tmp_path / "ctor",
                    client_auth=False,
                    extra_torrc=[f"ClientOnionAuthDir {keyed_dir}"],
                )
                try:
                    page = await asyncio.to_thread(keyed.curl, f"http://{svc.address}/")
                    assert page == INDEX
                finally:
                    keyed.stop()

    asyncio.run(main())


def test_add_onion_with_stem(
    testnet: Any, ctor_client: Any, backend: tuple[str, int], tmp_path: Path
) -> None:
    """stem's create_ephemeral_hidden_service(await_publication=True) against tor-client
    (ADD_ONION, HS_DESC UPLOAD/UPLOADED), a C tor client fetches through the service,
    then GETINFO onions/current|detached and DEL_ONION."""
    import stem.control

    info = testnet.info
    workdir = tmp_path / "daemon"
    workdir.mkdir()
    daemon = start_tor_client(
        info,
        workdir,
        extra_options=[
            "ControlPort 127.0.0.1:auto",
            f"ControlPortWriteToFile {workdir / 'control-port'}",
            "CookieAuthentication 0",
        ],
    )
    try:
        text = (workdir / "control-port").read_text()
        port = int(text.split("PORT=")[1].split()[0].rsplit(":", 1)[1])
        with stem.control.Controller.from_port(port=port) as controller:
            controller.authenticate()
            t0 = time.monotonic()
            response = controller.create_ephemeral_hidden_service(
                {80: f"{backend[0]}:{backend[1]}"}, await_publication=True, timeout=120
            )
            print(f"ADD_ONION published in {time.monotonic() - t0:.1f}s")
            service_id = response.service_id
            assert response.private_key_type == "ED25519-V3" and response.private_key
            assert ctor_client.curl(f"http://{service_id}.onion/") == INDEX
            assert controller.list_ephemeral_hidden_services() == [service_id]

            assert controller.remove_ephemeral_hidden_service(service_id)
            assert controller.list_ephemeral_hidden_services() == []

            # The returned key serves the same address again (detached this time).
            again = controller.create_ephemeral_hidden_service(
                {80: backend[1]},
                key_type="ED25519-V3",
                key_content=response.private_key,
                detached=True,
                await_publication=True,
                timeout=120,
            )
            assert again.service_id == service_id and not again.private_key
            assert controller.list_ephemeral_hidden_services(detached=True) == [service_id]
            assert ctor_client.curl(f"http://{service_id}.onion/") == INDEX
    finally:
        daemon.stop()


def test_sync_service_unix_target_and_a_directory_that_c_tor_then_reads(
    testnet: Any, ctor_client: Any, backend: tuple[str, int], tmp_path: Path
) -> None:
    """The blocking facade hosts a service from a directory puretor creates; C tor then
    loads that directory and derives the same address from its key."""
    from puretor.sync import TorClient as SyncTorClient

    info = testnet.info
    hs_dir = tmp_path / "hs"
    sock = tmp_path / "web.sock"  # port 81 goes to a Unix socket
    unix_server = socketserver.ThreadingUnixStreamServer(str(sock), _Handler)
    threading.Thread(target=unix_server.serve_forever, daemon=True).start()
    try:
        with (
            SyncTorClient(make_config(info, tmp_path / "data")) as tor,
            tor.onion_service({80: backend, 81: f"unix:{sock}"}, key=hs_dir) as svc,
        ):
            svc.wait_published(120)
            assert ctor_client.curl(f"http://{svc.address}/") == INDEX
            assert ctor_client.curl(f"http://{svc.address}:81/") == INDEX
            address = svc.address
    finally:
        unix_server.shutdown()
        unix_server.server_close()
    assert (hs_dir / "hostname").read_text().strip() == address
    secret = (hs_dir / "hs_ed25519_secret_key").read_bytes()
    (hs_dir / "hostname").unlink()
    assert _ctor_made_service_dir(info, tmp_path) == address
    assert (hs_dir / "hs_ed25519_secret_key").read_bytes() == secret


def test_intro_point_rotation(
    testnet: Any, ctor_client: Any, backend: tuple[str, int], tmp_path: Path
) -> None:
    """A worn-out introduction point (C tor: 16384-32768 introductions or 18-24 hours;
    here made to wear out after one) is replaced, the descriptor published again, and
    the old point closed; clients then reach the service through the new one."""
    info = testnet.info

    async def main() -> None:
        async with (
            TorClient(make_config(info, tmp_path / "data")) as tor,
            tor.onion_service({80: backend}, num_intro_points=1) as svc,
        ):
            await svc.wait_published(120)
            runner = svc._runner
            first = runner._intros[0]
            first.max_introductions = 1
            status, body = await http_get(tor, svc.address, "/")
            assert status == 200 and body == INDEX
            deadline = time.monotonic() + 60
            while svc.stats["publications"] < 2 or not first.handle.closed.is_set():
                assert time.monotonic() < deadline, svc.stats
                await asyncio.sleep(0.1)
            assert runner._intros and runner._intros[0] is not first
            page = await asyncio.to_thread(ctor_client.curl, f"http://{svc.address}/")
            assert page == INDEX

    asyncio.run(main())
