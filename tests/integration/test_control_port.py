"""The control port against the controllers people run: stem (from PyPI) and nyx (Debian's).

One ``tor-client`` daemon on the private network with a ControlPort (a hashed password made
by C tor's ``tor --hash-password`` and a cookie at CookieAuthFile) and a ControlSocket; a
second one with no authentication, explicitly asked for (``CookieAuthentication 0``). stem
authenticates with each method, reads versions, circuits and streams, receives CIRC, STREAM
and BW events while curl downloads through the SOCKS port, changes a live option and asks for
a new identity; nyx runs in tmux against the control port while a download runs. Hostile
controllers get control-spec replies or a closed connection, and SOCKS keeps serving.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import stem
import stem.connection
import stem.control
import stem.version
from ptclient import PtClient
from stem import Signal
from test_zz_hardening_helpers import curl_via, start_daemon

pytestmark = [pytest.mark.testnet, pytest.mark.timeout(600)]

PASSWORD = "correct horse"
SMALL = "http://target.test/ip"
DOWNLOAD = "http://target.test/files/10MiB"


def _ctor_hash(password: str) -> str:
    """A HashedControlPassword made by C tor itself."""
    out = subprocess.run(
        ["tor", "--quiet", "--hash-password", password],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return next(line for line in out.splitlines() if line.startswith("16:"))


class ControlledDaemon:
    def __init__(self, client: PtClient, workdir: Path, info: Any) -> None:
        self.client = client
        self.workdir = workdir
        self.info = info

    @property
    def port(self) -> int:
        text = (self.workdir / "control-port").read_text()
        return int(text.split("PORT=")[1].split()[0].rsplit(":", 1)[1])

    @property
    def socket_path(self) -> Path:
        return self.workdir / "control.sock"

    @property
    def cookie_path(self) -> Path:
        return self.workdir / "cookie"

    def controller(self, authenticate: bool = True) -> stem.control.Controller:
        controller = stem.control.Controller.from_port(port=self.port)
        if authenticate:
            controller.authenticate(password=PASSWORD)
        return controller


def _start(info: Any, workdir: Path, extra: list[str]) -> ControlledDaemon:
    lines = [
        "SocksPort 127.0.0.1:auto",
        "ControlPort 127.0.0.1:auto",
        f"ControlPortWriteToFile {workdir / 'control-port'}",
        "Log notice stdout",
        *extra,
    ]
    client = start_daemon(info, workdir, lines, audit=False, timeout=120)
    return ControlledDaemon(client, workdir, info)


@pytest.fixture(scope="module")
def daemon(testnet: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlledDaemon]:
    workdir = tmp_path_factory.mktemp("control")
    started = _start(
        testnet.info,
        workdir,
        [
            f"HashedControlPassword {_ctor_hash(PASSWORD)}",
            "CookieAuthentication 1",
            f"CookieAuthFile {workdir / 'cookie'}",
            f"ControlSocket {workdir / 'control.sock'}",
            "MapAddress *.mapped.test target.test",
        ],
    )
    try:
        yield started
    finally:
        started.client.stop()


# -- authentication with each method ------------------------------------------------------------


def _authenticate_with(method: str, d: ControlledDaemon) -> stem.control.Controller:
    if method == "SOCKET":
        controller = stem.control.Controller.from_socket_file(str(d.socket_path))
        controller.authenticate(password=PASSWORD)
        return controller
    controller = d.controller(authenticate=False)
    if method == "PASSWORD":
        stem.connection.authenticate_password(controller, PASSWORD)
    elif method == "COOKIE":
        stem.connection.authenticate_cookie(controller, str(d.cookie_path))
    elif method == "SAFECOOKIE":
        stem.connection.authenticate_safecookie(controller, str(d.cookie_path))
    return controller


def _read_state(controller: stem.control.Controller) -> None:
    version = controller.get_version()
    assert "puretor" in str(version) and version >= stem.version.Version("0.4.9.0")
    status = controller.get_info("circuit-status")
    circuits = controller.get_circuits()
    assert circuits, f"no circuits after bootstrap: {status!r}"
    built = [c for c in circuits if c.status == "BUILT" and "ONEHOP_TUNNEL" not in c.build_flags]
    assert built and all(len(c.path) == 3 for c in built), circuits
    assert all(len(fp) == 40 for c in built for fp, _nick in c.path)
    assert isinstance(controller.get_streams(), list)


@pytest.mark.options(
    "ControlPort",
    "ControlSocket",
    "HashedControlPassword",
    "CookieAuthentication",
    "CookieAuthFile",
    "ControlPortWriteToFile",
)
@pytest.mark.parametrize("method", ["PASSWORD", "COOKIE", "SAFECOOKIE", "SOCKET"])
def test_stem_authenticates_and_reads_state(daemon: ControlledDaemon, method: str) -> None:
    assert os.stat(daemon.cookie_path).st_mode & 0o777 == 0o600
    assert os.stat(daemon.socket_path).st_mode & 0o777 == 0o600
    with _authenticate_with(method, daemon) as controller:
        _read_state(controller)


def test_protocolinfo_names_every_method_and_the_cookie(daemon: ControlledDaemon) -> None:
    with stem.control.Controller.from_port(port=daemon.port) as controller:
        info = stem.connection.get_protocolinfo(controller)
    methods = {m.upper() for m in info.auth_methods}
    assert methods == {"PASSWORD", "COOKIE", "SAFECOOKIE"}, info.auth_methods
    assert info.cookie_path == str(daemon.cookie_path)


@pytest.mark.options("CookieAuthentication")
def test_no_authentication_only_when_asked_for(testnet: Any, tmp_path: Path) -> None:
    """ControlPort without an auth method: refused at start-up; with an explicit
    'CookieAuthentication 0' it runs, with C tor's warning, and stem gets in with NULL."""
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "puretor.cli",
            "--ControlPort",
            "auto",
            "--DataDirectory",
            str(tmp_path / "refused"),
            "--verify-config",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and "no authentication method" in refused.stderr
    d = _start(testnet.info, tmp_path / "null", ["CookieAuthentication 0"])
    try:
        assert "any program on your computer can reconfigure" in d.client.log_text()
        with stem.control.Controller.from_port(port=d.port) as controller:
            info = stem.connection.get_protocolinfo(controller)
            assert [m.upper() for m in info.auth_methods] == ["NONE"]
            stem.connection.authenticate_none(controller)
            _read_state(controller)
            # TAKEOWNERSHIP: the daemon goes when this connection does.
            assert controller.msg("TAKEOWNERSHIP").is_ok()
        d.client.proc.wait(timeout=30)
        assert "Owning controller connection has closed -- exiting now." in d.client.log_text()
    finally:
        d.client.stop()


# -- events, NEWNYM, SETCONF ------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.lock = threading.Lock()

    def __call__(self, event: Any) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, kind: str) -> list[Any]:
        with self.lock:
            return [e for e in self.events if e.type == kind]

    def wait(self, what: Callable[[], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = what()
            if found:
                return found
            time.sleep(0.1)
        raise AssertionError(f"timed out; events: {[str(e) for e in self.events][-20:]}")


def _stream_circuit(recorder: Recorder, since: int) -> str:
    """The circuit of the first stream that succeeded after event number ``since``."""
    events = recorder.wait(
        lambda: [
            e for e in recorder.events[since:] if e.type == "STREAM" and e.status == "SUCCEEDED"
        ]
    )
    return str(events[0].circ_id)


def test_events_during_a_download_and_newnym(daemon: ControlledDaemon) -> None:
    recorder = Recorder()
    with daemon.controller() as controller:
        controller.add_event_listener(recorder, "CIRC", "STREAM", "BW")
        # A new identity first: the download then needs a circuit built now (CIRC events).
        controller.signal(Signal.NEWNYM)
        since = len(recorder.events)
        read_before = int(controller.get_info("traffic/read"))
        result = curl_via(daemon.client, DOWNLOAD, "-o", "/dev/null")
        assert result.returncode == 0, result.stderr
        # traffic/read counts the cells from relays: the 10 MiB plus cell overhead (~2 %).
        read = int(controller.get_info("traffic/read")) - read_before
        assert 10 * 2**20 < read < 1.15 * 10 * 2**20, read
        first = _stream_circuit(recorder, since)
        streams = [e for e in recorder.of("STREAM") if e.target_address == "target.test"]
        statuses = [e.status for e in streams]
        assert "NEW" in statuses and "SENTCONNECT" in statuses and "SUCCEEDED" in statuses
        recorder.wait(lambda: [e for e in recorder.of("STREAM") if e.status == "CLOSED"])
        bw = recorder.wait(lambda: [e for e in recorder.of("BW") if e.read > 1_000_000])
        assert bw[0].read > 1_000_000
        assert any(e.status == "BUILT" for e in recorder.of("CIRC"))
        assert any(
            e.id == first and e.status == "BUILT" and len(e.path) == 3 for e in recorder.of("CIRC")
        ), [str(e) for e in recorder.of("CIRC")]
        # NEWNYM (beyond C tor's 10 s rate limit): the next SOCKS connection gets a new circuit.
        time.sleep(10.5)
        controller.signal(Signal.NEWNYM)
        since = len(recorder.events)
        assert curl_via(daemon.client, SMALL).returncode == 0
        second = _stream_circuit(recorder, since)
        assert second != first, "NEWNYM did not give the next stream a new circuit"
        since = len(recorder.events)
        assert curl_via(daemon.client, SMALL).returncode == 0
        assert _stream_circuit(recorder, since) == second, "without NEWNYM the circuit is reused"


def test_log_events_reach_the_controller(daemon: ControlledDaemon) -> None:
    recorder = Recorder()
    with daemon.controller() as controller:
        controller.add_event_listener(recorder, "NOTICE")
        controller.signal(Signal.DUMP)  # logs the statistics line at notice
        notices = recorder.wait(
            lambda: [e for e in recorder.of("NOTICE") if "Statistics:" in e.message]
        )
        assert "open_circuits=" in notices[0].message
        assert controller.get_info("events/names").split()[0] == "CIRC"
        relay = next(iter(controller.get_network_statuses()))
        md = controller.get_microdescriptor(relay.fingerprint)
        assert md.onion_key and md.ntor_onion_key, str(md)
        assert str(controller.get_microdescriptor(relay.nickname)) == str(md)
        assert controller.get_network_status(relay.fingerprint).nickname == relay.nickname
        controller.add_event_listener(recorder, stem.control.EventType.ADDRMAP)
        assert controller.msg("RESOLVE target.test").is_ok()
        addrmap = recorder.wait(lambda: recorder.of("ADDRMAP"))[0]
        assert addrmap.hostname == "target.test"
        assert addrmap.destination == daemon.info["targets"]["ip"], str(addrmap)
        assert controller.msg("NOSUCHCOMMAND x").raw_content() == (
            '510 Unrecognized command "NOSUCHCOMMAND"\r\n'
        )


def test_streams_are_listed_while_they_are_open(daemon: ControlledDaemon) -> None:
    with daemon.controller() as controller:
        proc = subprocess.Popen(
            [
                "curl",
                "-s",
                "--limit-rate",
                "500k",
                "--socks5-hostname",
                daemon.client.socks_address,
                DOWNLOAD,
                "-o",
                "/dev/null",
            ],
        )
        try:
            deadline = time.monotonic() + 30
            streams: list[Any] = []
            while time.monotonic() < deadline and not streams:
                streams = [s for s in controller.get_streams() if s.target_address == "target.test"]
                time.sleep(0.2)
            assert streams and streams[0].status == "SUCCEEDED", streams
            circuit_ids = {c.id for c in controller.get_circuits()}
            assert streams[0].circ_id in circuit_ids
            # STREAM_BW: that stream's bytes, once a second.
            recorder = Recorder()
            controller.add_event_listener(recorder, stem.control.EventType.STREAM_BW)
            samples = recorder.wait(
                lambda: [e for e in recorder.of("STREAM_BW") if e.id == streams[0].id]
            )
            assert samples[0].read > 0, str(samples[0])
        finally:
            proc.kill()
            proc.wait()


def test_setconf_of_a_live_option_takes_effect(daemon: ControlledDaemon) -> None:
    with daemon.controller() as controller:
        assert controller.get_conf("SocksPolicy", "none") in ("", "none", None)
        assert curl_via(daemon.client, SMALL).returncode == 0
        controller.set_conf("SocksPolicy", "reject *")
        try:
            assert controller.get_conf("SocksPolicy") in ("reject *", "reject *:*")
            refused = curl_via(daemon.client, SMALL, timeout=30)
            assert refused.returncode != 0
        finally:
            controller.reset_conf("SocksPolicy")
        assert curl_via(daemon.client, SMALL).returncode == 0
        # Options that need a restart are refused, clearly.
        with pytest.raises(stem.InvalidRequest):
            controller.set_conf("DataDirectory", "/tmp")
        with pytest.raises(stem.InvalidRequest, match="not supported by puretor"):
            controller.set_conf("ExitNodes", "{us}")


@pytest.mark.options("MapAddress")
def test_mapaddress_from_torrc_and_from_the_controller(daemon: ControlledDaemon) -> None:
    """torrc's ``MapAddress *.mapped.test target.test`` sends www.mapped.test to the target;
    MAPADDRESS (stem's map_address) adds a name and a virtual address, each announced by an
    ADDRMAP event and listed by GETINFO address-mappings/*; a bad target gets 512."""
    ok = curl_via(daemon.client, "http://www.mapped.test/ip")
    assert ok.returncode == 0 and ok.stdout.strip(), ok.stderr
    with daemon.controller() as controller:
        assert controller.get_info("address-mappings/config") == "*.mapped.test target.test NEVER"
        recorder = Recorder()
        controller.add_event_listener(recorder, stem.control.EventType.ADDRMAP)
        mapped = controller.map_address({"alias.test": "target.test", "0.0.0.0": "target.test"})
        virtual = next(addr for addr in mapped if addr != "alias.test")
        assert mapped == {"alias.test": "target.test", virtual: "target.test"}
        assert virtual.startswith("127."), virtual  # VirtualAddrNetworkIPv4 127.192.0.0/10
        recorder.wait(lambda: len(recorder.of("ADDRMAP")) >= 2)
        control = controller.get_info("address-mappings/control").splitlines()
        assert {"alias.test target.test NEVER", f"{virtual} target.test NEVER"} <= set(control)
        for url in ("http://alias.test/ip", f"http://{virtual}/ip"):
            got = curl_via(daemon.client, url)
            assert got.returncode == 0 and got.stdout.strip(), (url, got.stderr)
        bad = controller.msg("MAPADDRESS bad.test=no/such/name")
        assert bad.raw_content().startswith("512 syntax error: invalid address"), bad.raw_content()
        assert controller.map_address({"alias.test": "alias.test"}) == {"alias.test": "alias.test"}
        control = controller.get_info("address-mappings/control").splitlines()
        assert "alias.test target.test NEVER" not in control, control


# -- stem's custom path recipe ----------------------------------------------------------------


@pytest.mark.options("__LeaveStreamsUnattached")
def test_stems_custom_path_recipe_uses_the_chosen_exit(daemon: ControlledDaemon) -> None:
    """new_circuit([guard, middle, exit]), __LeaveStreamsUnattached 1, attach_stream on
    STREAM NEW: the target sees the exit we chose, for each exit in turn."""
    with daemon.controller() as controller:
        relays = list(controller.get_network_statuses())
        exits = [r for r in relays if "Exit" in r.flags]
        guard = next(r for r in relays if "Guard" in r.flags and "Exit" not in r.flags)
        assert len(exits) >= 2, [r.nickname for r in relays]
        controller.set_conf("__LeaveStreamsUnattached", "1")
        try:
            for exit_relay in exits[:2]:
                middle = next(
                    r for r in relays if r not in (guard, exit_relay) and "Exit" not in r.flags
                )
                path = [guard.fingerprint, middle.fingerprint, exit_relay.fingerprint]
                circuit_id = controller.new_circuit(path, await_build=True, timeout=60)
                attached: list[str] = []

                def attach(
                    event: Any, circuit_id: str = circuit_id, attached: list[str] = attached
                ) -> None:
                    if event.status == "NEW" and event.target_address == "target.test":
                        controller.attach_stream(event.id, circuit_id)
                        attached.append(event.id)

                controller.add_event_listener(attach, stem.control.EventType.STREAM)
                try:
                    result = curl_via(daemon.client, SMALL)
                finally:
                    controller.remove_event_listener(attach)
                assert result.returncode == 0, result.stderr
                assert attached, "no STREAM NEW event to attach"
                assert result.stdout.decode().strip() == exit_relay.address
                circuit = controller.get_circuit(circuit_id)
                assert [fp for fp, _ in circuit.path] == path
                controller.close_circuit(circuit_id)
        finally:
            controller.reset_conf("__LeaveStreamsUnattached")
        # Streams are attached by the client again.
        assert curl_via(daemon.client, SMALL).returncode == 0


def test_extend_repurpose_and_redirect(daemon: ControlledDaemon) -> None:
    """EXTENDCIRCUIT of the controller's two-hop CONTROLLER circuit by an exit,
    SETCIRCUITPURPOSE back to GENERAL (a CIRC_MINOR event), and REDIRECTSTREAM of a
    waiting stream to the target before it is attached to that circuit."""
    with daemon.controller() as controller:
        relays = list(controller.get_network_statuses())
        exit_relay = next(r for r in relays if "Exit" in r.flags)
        guard = next(r for r in relays if "Guard" in r.flags and "Exit" not in r.flags)
        middle = next(r for r in relays if r not in (guard, exit_relay) and "Exit" not in r.flags)
        recorder = Recorder()
        controller.add_event_listener(recorder, stem.control.EventType.CIRC_MINOR)
        circuit_id = controller.new_circuit(
            [guard.fingerprint, middle.fingerprint], purpose="controller", await_build=True
        )
        assert controller.get_circuit(circuit_id).purpose == "CONTROLLER"
        controller.extend_circuit(circuit_id, [exit_relay.fingerprint], await_build=True)
        circuit = controller.get_circuit(circuit_id)
        assert [fp for fp, _ in circuit.path] == [
            guard.fingerprint,
            middle.fingerprint,
            exit_relay.fingerprint,
        ]
        controller.repurpose_circuit(circuit_id, "general")
        changed = recorder.wait(lambda: recorder.of("CIRC_MINOR"))
        assert changed[0].event == "PURPOSE_CHANGED" and changed[0].old_purpose == "CONTROLLER"
        assert controller.get_circuit(circuit_id).purpose == "GENERAL"

        def redirect_and_attach(event: Any) -> None:
            if event.status == "NEW" and event.target_address == "elsewhere.test":
                reply = controller.msg(f"REDIRECTSTREAM {event.id} target.test")
                assert reply.is_ok(), str(reply)
                controller.attach_stream(event.id, circuit_id)

        controller.set_conf("__LeaveStreamsUnattached", "1")
        controller.add_event_listener(redirect_and_attach, stem.control.EventType.STREAM)
        try:
            result = curl_via(daemon.client, "http://elsewhere.test/ip")
        finally:
            controller.remove_event_listener(redirect_and_attach)
            controller.reset_conf("__LeaveStreamsUnattached")
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode().strip() == exit_relay.address
        controller.close_circuit(circuit_id)


def test_circ_bw_guard_newconsensus_and_dropguards(daemon: ControlledDaemon) -> None:
    """CIRC_BW while curl downloads; DROPGUARDS gives GUARD DROPPED for the old guards
    and NEW for the next; a NEWCONSENSUS event within the next voting intervals (20 s
    on the private network) lists the relays."""
    with daemon.controller() as controller:
        recorder = Recorder()
        kinds = ("CIRC_BW", "GUARD", "NEWCONSENSUS")
        controller.add_event_listener(
            recorder, *(getattr(stem.control.EventType, k) for k in kinds)
        )
        assert curl_via(daemon.client, DOWNLOAD, "-o", "/dev/null").returncode == 0
        samples = recorder.wait(lambda: [e for e in recorder.of("CIRC_BW") if e.read > 0])
        assert samples[0].read >= 498 * 2  # at least two cells' worth
        before = {line.split()[0] for line in controller.get_info("entry-guards").splitlines()}
        controller.drop_guards()
        assert curl_via(daemon.client, SMALL).returncode == 0
        guards = recorder.wait(lambda: [e for e in recorder.of("GUARD") if e.status == "NEW"])
        dropped = {e.endpoint_fingerprint for e in recorder.of("GUARD") if e.status == "DROPPED"}
        assert {g.split("~")[0] for g in before} <= {f"${fp}" for fp in dropped}, dropped
        assert guards[0].guard_type == "ENTRY"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not recorder.of("NEWCONSENSUS"):
            curl_via(daemon.client, SMALL)  # keeps the client using (and refreshing) its directory
            time.sleep(2)
        consensus = recorder.of("NEWCONSENSUS")
        assert consensus, "no NEWCONSENSUS event in 90 s"
        assert {r.nickname for r in consensus[0].desc} >= {
            r.nickname for r in controller.get_network_statuses()
        }


# -- hostile controllers ----------------------------------------------------------------------


def _raw(port: int, data: bytes, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Send ``data``, read until the daemon closes (True) or ``timeout`` passes (False)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        got = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return got, False
            except ConnectionResetError:
                return got, True
            if not chunk:
                return got, True
            got += chunk
        return got, False


def test_hostile_controllers_get_replies_or_a_closed_connection(daemon: ControlledDaemon) -> None:
    port = daemon.port
    cases = {
        "wrong password": (
            b'AUTHENTICATE "wrong"\r\nGETINFO version\r\n',
            b"515 Authentication failed",
        ),
        "wrong cookie": (b"AUTHENTICATE " + b"ab" * 32 + b"\r\nGETINFO version\r\n", b"515 "),
        "command before auth": (b"GETINFO version\r\n", b"514 Authentication required.\r\n"),
        "100 KB line": (b"GETINFO " + b"x" * 100_000 + b"\r\n", b"500 Line too long.\r\n"),
        "garbage": (
            os.urandom(2000).replace(b"\n", b"") + b"\r\n",
            b"514 Authentication required.",
        ),
        "bad safecookie": (
            b"AUTHCHALLENGE SAFECOOKIE " + b"00" * 32 + b"\r\nAUTHENTICATE " + b"11" * 32 + b"\r\n",
            b"515 Authentication failed: Safe cookie response did not match",
        ),
    }
    for name, (data, expected) in cases.items():
        got, closed = _raw(port, data)
        assert expected in got, (name, got[:200])
        assert closed, f"{name}: the connection stayed open"
        assert b"version=" not in got, name
    # HTTP on the control port, and a half-sent line: no crash, no hang of the daemon.
    _raw(port, b"GET / HTTP/1.0\r\n\r\n", timeout=3)
    _raw(port, b"GETINFO vers", timeout=1)
    assert daemon.client.proc.poll() is None
    assert curl_via(daemon.client, SMALL).returncode == 0
    with daemon.controller() as controller:
        assert "puretor" in str(controller.get_version())


# -- __OwningControllerProcess ---------------------------------------------------------------


@pytest.mark.options("__OwningControllerProcess")
def test_the_daemon_exits_when_its_owning_controller_goes(testnet: Any, tmp_path: Path) -> None:
    owner = subprocess.Popen(["sleep", "600"])
    try:
        d = _start(
            testnet.info,
            tmp_path / "owned",
            ["CookieAuthentication 1", f"__OwningControllerProcess {owner.pid}"],
        )
        try:
            assert d.client.proc.poll() is None
            owner.kill()
            owner.wait()
            d.client.proc.wait(timeout=30)
            assert "has vanished -- exiting now" in d.client.log_text()
        finally:
            d.client.stop()
    finally:
        owner.kill()
        owner.wait()


# -- txtorcon ---------------------------------------------------------------------------------

TXTORCON_SCRIPT = """
import sys
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint
import txtorcon


@defer.inlineCallbacks
def main(reactor, port, password):
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", int(port))
    tor = yield txtorcon.connect(reactor, endpoint, password_function=lambda: password)
    info = yield tor.protocol.get_info("version")
    print("version", info["version"])
    seen = []
    done = defer.Deferred()

    def on_bw(data):
        seen.append(data)
        if len(seen) >= 3 and not done.called:
            done.callback(None)

    yield tor.protocol.add_event_listener("BW", on_bw)
    yield done
    print("BW", seen)
    state = yield tor.create_state()
    print("circuits", sorted(c.state for c in state.circuits.values()))


task.react(main, sys.argv[1:])
"""


def _system_txtorcon() -> bool:
    probe = subprocess.run(
        ["/usr/bin/python3", "-c", "import txtorcon"], capture_output=True, check=False
    )
    return probe.returncode == 0


@pytest.mark.skipif(
    not os.path.exists("/usr/bin/python3") or not _system_txtorcon(),
    reason="needs Debian's python3-txtorcon",
)
def test_txtorcon_connects_authenticates_and_gets_events(daemon: ControlledDaemon) -> None:
    """A second controller library: Debian's txtorcon (Twisted), on the system Python."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        ["/usr/bin/python3", "-c", TXTORCON_SCRIPT, str(daemon.port), PASSWORD],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("version 0.4.9.0-puretor-"), result.stdout
    assert lines[1].startswith("BW ["), result.stdout
    assert "'BUILT'" in lines[2], result.stdout


# -- nyx --------------------------------------------------------------------------------------


@pytest.mark.skipif(not shutil.which("nyx") or not shutil.which("tmux"), reason="needs nyx, tmux")
def test_nyx_shows_version_bandwidth_circuits_and_gets_a_new_identity(
    daemon: ControlledDaemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Debian's nyx (on Debian's python3-stem) in tmux, against the control port, while a
    download runs: the screen shows our version and a bandwidth graph that is not zero; its
    connections page lists the circuits' relays; pressing ``n`` asks for a new identity."""
    home = tmp_path / "home"
    home.mkdir()
    session = f"nyx{os.getpid()}"
    env = dict(os.environ, HOME=str(home), TERM="xterm-256color")
    env.pop("PYTHONPATH", None)  # nyx is Debian's, on the system Python
    tmux = ["tmux", "-L", session]

    def screen() -> str:
        return subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", session],
            capture_output=True,
            text=True,
            env=env,
            timeout=10,
        ).stdout

    def keys(*names: str) -> None:
        subprocess.run([*tmux, "send-keys", "-t", session, *names], env=env, timeout=10)

    def wait_for(what: Callable[[str], bool], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        text = screen()
        while not what(text) and time.monotonic() < deadline:
            time.sleep(1)
            text = screen()
        return text

    nyx = f"/usr/bin/nyx -i 127.0.0.1:{daemon.port}"
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", session, "-x", "160", "-y", "50", nyx],
        env=env,
        check=True,
        timeout=30,
    )
    download = subprocess.Popen(
        [
            "curl",
            "-s",
            "--limit-rate",
            "2M",
            "--socks5-hostname",
            daemon.client.socks_address,
            "http://target.test/files/100MiB",
            "-o",
            "/dev/null",
        ],
    )
    recorder = Recorder()
    output = Path(os.environ.get("PURETOR_TEST_OUTPUT", tmp_path))
    try:
        first = wait_for(lambda text: "puretor" in text and _bandwidth_shown(text))
        (output / "nyx-screen.txt").write_text(first)
        with capsys.disabled():  # the screen capture goes into the test run's output
            sys.stdout.write("\nnyx screen (tmux capture-pane):\n" + first + "\n")
        assert "puretor" in first, first
        assert _bandwidth_shown(first), first
        with daemon.controller() as controller:
            nicknames = {
                nick
                for c in controller.get_circuits()
                if c.status == "BUILT"
                for _fp, nick in c.path
            }
            keys("Right")  # page 2: connections
            page = wait_for(lambda text: any(n in text for n in nicknames), timeout=30)
            print("nyx connections page:\n" + page)
            assert any(n in page for n in nicknames), (nicknames, page)
            controller.add_event_listener(recorder, stem.control.EventType.SIGNAL)
            keys("n")  # new identity
            recorder.wait(
                lambda: [e for e in recorder.of("SIGNAL") if e.signal == "NEWNYM"], timeout=20
            )
    finally:
        download.kill()
        download.wait()
        subprocess.run([*tmux, "kill-server"], env=env, timeout=10, check=False)


def _bandwidth_shown(screen: str) -> bool:
    """nyx's graph header: "Download (X KB/sec)" with a rate above zero."""
    import re

    rates = re.findall(r"Download \(([\d.]+) ([KMG]?B)/sec", screen)
    return any(float(value) > 0 for value, _unit in rates)


# -- the library's view ---------------------------------------------------------------------


def test_circuit_status_lists_exactly_the_open_circuits(testnet: Any, tmp_path: Path) -> None:
    """The library's events and lists, in process: every circuit the client has open (the
    legs of conflux sets included) is listed as BUILT, none that closed is, and a stream's
    events come in order."""
    import asyncio

    from test_library_api import net_config, run

    from puretor import CircuitEvent, StreamEvent, TorClient

    async def main() -> None:
        async with TorClient(net_config(testnet.info, tmp_path / "data")) as tor:
            statuses: list[str] = []

            async def watch() -> None:
                async for event in tor.events(StreamEvent):
                    statuses.append(event.status)

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(0)
            for _ in range(3):
                reader, writer = await tor.open_connection("target.test", 80)
                writer.write(b"GET /ip HTTP/1.0\r\nHost: target.test\r\n\r\n")
                await reader.read()
                writer.close()
                await tor.new_identity()
            await asyncio.sleep(1.0)
            watcher.cancel()
            assert statuses[:3] == ["NEW", "SENTCONNECT", "SUCCEEDED"], statuses
            assert statuses.count("CLOSED") == 3, statuses
            assert tor.stream_status() == [], tor.stream_status()
            connected = [c for c in tor.channel_status() if c.status == "CONNECTED"]
            assert connected and all(len(c.relay.fingerprint) == 40 for c in connected)
            cm = tor._circmgr
            assert cm is not None
            # Close a conflux set (its legs must all leave the list) and a plain circuit.
            open_handles = [s.circuit for s in cm.pool.slots if s.circuit is not None]
            sets = [h for h in open_handles if h.is_open and h.conflux_legs]
            plain = [h for h in open_handles if h.is_open and not h.conflux_legs]
            assert sets, "no conflux set to close"
            for handle in (sets[0], *plain[:1]):
                handle.close()
            await asyncio.sleep(0.5)
            handles = [s.circuit for s in cm.pool.slots if s.circuit is not None]
            open_ids = {leg.id for h in handles if h.is_open for leg in (h.conflux_legs or (h,))}
            built = {c.id for c in tor.circuit_status() if c.status == "BUILT"}
            onehop = {c.id for c in tor.circuit_status() if "ONEHOP_TUNNEL" in c.build_flags}
            assert built - onehop == open_ids, (built, onehop, open_ids)
            assert all(
                isinstance(c, CircuitEvent) and len(c.path) == 3
                for c in tor.circuit_status()
                if c.id in open_ids
            )

    run(main())
