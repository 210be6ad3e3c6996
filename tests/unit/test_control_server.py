"""The control port in process: a real `TorClient` (not bootstrapped, so no network) under a
`ControlServer` on a loopback port, driven by raw control-spec bytes: authentication rules,
replies, configuration, events and limits.  The private-network tests (stem, nyx) are in
tests/integration/test_control_port.py."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from puretor.app.control import ControlServer, DaemonHooks
from puretor.client import TorClient
from puretor.config import TorConfig
from puretor.proto.controlauth import hash_password

AUTH = "test000a orport=5000 v3ident=" + "A" * 40 + " 127.0.0.1:7000 " + " ".join(["BEEF"] * 10)


class Harness:
    def __init__(self, server: ControlServer, stopped: list[str]) -> None:
        self.server = server
        self.stopped = stopped

    @property
    def port(self) -> int:
        return int(self.server.addresses[0].rsplit(":", 1)[1])

    async def talk(self, data: bytes, *, until: bytes = b"", timeout: float = 5.0) -> bytes:
        """Send ``data``; read until ``until`` is seen, the server closes, or timeout."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(data)
        got = b""
        try:
            while until not in got or not until:
                chunk = await asyncio.wait_for(reader.read(65536), timeout)
                if not chunk:
                    break
                got += chunk
        except TimeoutError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        return got


@contextlib.asynccontextmanager
async def control(tmp_path: Path, **options: object) -> AsyncIterator[Harness]:
    config = TorConfig.from_options(
        DataDirectory=str(tmp_path / "data"),
        TestingTorNetwork=1,
        DirAuthority=AUTH,
        ControlPort="127.0.0.1:auto",
        **options,  # type: ignore[arg-type]
    )
    tor = TorClient(config)
    stopped: list[str] = []

    def apply(new: TorConfig) -> None:
        tor.config = new

    hooks = DaemonHooks(
        torrc_path=tmp_path / "torrc",
        config_from_text=functools.partial(_config_from_text, tmp_path),
        listener_addresses=lambda kind: ["127.0.0.1:9050"] if kind == "socks" else [],
        apply_config=apply,
        reload=lambda: None,
        shutdown=stopped.append,
        statistics=lambda: "Statistics: test",
        started=0.0,
    )
    server = ControlServer(tor, hooks)
    await server.start()
    try:
        yield Harness(server, stopped)
    finally:
        server.close()
        await tor.aclose()


def _config_from_text(tmp_path: Path, text: str) -> TorConfig:
    loaded = tmp_path / "loadconf.torrc"
    loaded.write_text(text)
    return TorConfig.from_torrc(loaded)


def run_in_loop(test: Callable[[Path], Awaitable[None]]) -> Callable[[Path], None]:
    @functools.wraps(test)
    def run(tmp_path: Path) -> None:
        asyncio.run(asyncio.wait_for(test(tmp_path), 60))

    return run


def _authenticate(secret: str) -> bytes:
    return f"AUTHENTICATE {secret}\r\n".encode()


@run_in_loop
async def test_password_authentication_and_replies(tmp_path: Path) -> None:
    async with control(tmp_path, HashedControlPassword=hash_password(b"pw")) as h:
        got = await h.talk(b"PROTOCOLINFO 1\r\n", until=b"250 OK\r\n")
        assert got.startswith(b"250-PROTOCOLINFO 1\r\n250-AUTH METHODS=HASHEDPASSWORD\r\n")
        assert b'250-VERSION Tor="0.4.9.0-puretor-' in got
        got = await h.talk(
            _authenticate('"pw"') + b"GETINFO version events/names\r\nQUIT\r\n",
            until=b"closing connection",
        )
        lines = got.split(b"\r\n")
        assert lines[0] == b"250 OK"
        assert lines[1].startswith(b"250-version=0.4.9.0-puretor-")
        assert lines[2].startswith(b"250-events/names=CIRC CIRC_MINOR STREAM ORCONN BW")
        assert lines[3:5] == [b"250 OK", b"250 closing connection"]
        # Hex works too; a wrong password gets 515 and the connection closes.
        assert (await h.talk(_authenticate(b"pw".hex()), until=b"\r\n")) == b"250 OK\r\n"
        got = await h.talk(_authenticate('"nope"') + b"GETINFO version\r\n")
        assert got.startswith(b"515 Authentication failed: Password did not match")
        assert b"version=" not in got


@run_in_loop
async def test_before_authentication_only_four_commands(tmp_path: Path) -> None:
    async with control(tmp_path, CookieAuthentication=1) as h:
        got = await h.talk(b"GETINFO version\r\nPROTOCOLINFO\r\n")
        assert got == b"514 Authentication required.\r\n"
        got = await h.talk(b"PROTOCOLINFO\r\nPROTOCOLINFO\r\n")
        assert got.endswith(b"515 Only one PROTOCOLINFO command allowed before AUTHENTICATE.\r\n")
        assert (await h.talk(b"QUIT\r\n")) == b"250 closing connection\r\n"


@run_in_loop
async def test_cookie_and_safecookie(tmp_path: Path) -> None:
    async with control(tmp_path, CookieAuthentication=1) as h:
        cookie_file = tmp_path / "data" / "control_auth_cookie"
        assert os.stat(cookie_file).st_mode & 0o777 == 0o600
        cookie = cookie_file.read_bytes()
        assert len(cookie) == 32
        info = await h.talk(b"PROTOCOLINFO\r\n", until=b"250 OK\r\n")
        assert f'METHODS=COOKIE,SAFECOOKIE COOKIEFILE="{cookie_file}"'.encode() in info
        assert (await h.talk(_authenticate(cookie.hex()), until=b"\r\n")) == b"250 OK\r\n"
        wrong = await h.talk(_authenticate((b"x" * 32).hex()))
        assert wrong == (
            b"515 Authentication failed: Authentication cookie did not match expected value.\r\n"
        )
        # SAFECOOKIE: prove the cookie without sending it.
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        client_nonce = os.urandom(32)
        writer.write(b"AUTHCHALLENGE SAFECOOKIE " + client_nonce.hex().encode() + b"\r\n")
        line = (await reader.readline()).decode().split()
        server_hash = bytes.fromhex(line[2].split("=")[1])
        server_nonce = bytes.fromhex(line[3].split("=")[1])
        message = cookie + client_nonce + server_nonce
        key = b"Tor safe cookie authentication server-to-controller hash"
        assert server_hash == hmac.new(key, message, hashlib.sha256).digest()
        key = b"Tor safe cookie authentication controller-to-server hash"
        response = hmac.new(key, message, hashlib.sha256).hexdigest()
        writer.write(f"AUTHENTICATE {response}\r\nGETINFO uptime\r\n".encode())
        assert await reader.readline() == b"250 OK\r\n"
        assert (await reader.readline()).startswith(b"250-uptime=")
        writer.close()


@run_in_loop
async def test_configuration_commands(tmp_path: Path) -> None:
    async with control(tmp_path, CookieAuthentication=0) as h:
        got = await h.talk(
            _authenticate("")
            + b"GETCONF SocksTimeout __OwningControllerProcess\r\n"
            + b"SETEVENTS CONF_CHANGED\r\n"
            + b'SETCONF SafeSocks=1 SocksTimeout="30 seconds"\r\n'
            + b"GETCONF SafeSocks ORPort\r\n"
            + b"SETCONF DataDirectory=/tmp\r\n"
            + b"SETCONF ExitNodes=x\r\n"
            + b"RESETCONF SafeSocks\r\nGETCONF SafeSocks\r\n"
            + b"SETEVENTS NOSUCHEVENT\r\nUSEFEATURE VERBOSE_NAMES\r\nFROB\r\nQUIT\r\n",
            until=b"closing connection",
        )
        text = got.decode()
        assert "250-SocksTimeout=120\r\n250 __OwningControllerProcess\r\n" in text
        assert "650-CONF_CHANGED\r\n650-SafeSocks=1\r\n650-SocksTimeout=30\r\n650 OK" in text
        assert '552 Unrecognized configuration key "ORPort" (not supported by puretor)' in text
        assert "553 Transition not allowed: puretor applies DataDirectory only at start-up" in text
        assert "552 Unrecognized option: SETCONF: C tor option 'ExitNodes' is not supported" in text
        assert "250 SafeSocks=0\r\n" in text
        assert h.server.tor.config.safe_socks is False
        assert h.server.tor.config.socks_timeout == 30.0
        assert '552 Unrecognized event "NOSUCHEVENT"' in text
        assert '510 Unrecognized command "FROB"' in text


@run_in_loop
async def test_getinfo_keys_a_client_can_answer_offline(tmp_path: Path) -> None:
    async with control(tmp_path, CookieAuthentication=0) as h:
        got = await h.talk(
            _authenticate("")
            + b"GETINFO config-text\r\nGETINFO info/names\r\nGETINFO net/listeners/socks\r\n"
            + b"GETINFO status/bootstrap-phase circuit-status traffic/read dormant\r\n"
            + b"GETINFO fingerprint\r\nGETINFO exit-policy/full\r\nGETINFO ip-to-country/1.2.3.4\r\n"
            + b"GETINFO no/such/key\r\nQUIT\r\n",
            until=b"closing connection",
        )
        text = got.decode()
        assert "250+config-text=\r\n" in text and "ControlPort 127.0.0.1:auto\r\n" in text
        assert "250+info/names=\r\n" in text and "circuit-status -- " in text
        assert '250-net/listeners/socks="127.0.0.1:9050"\r\n' in text
        assert (
            '250-status/bootstrap-phase=NOTICE BOOTSTRAP PROGRESS=0 TAG=starting SUMMARY="Starting"'
            in text
        )
        assert "250-circuit-status=\r\n250-traffic/read=0\r\n250-dormant=0\r\n250 OK" in text
        assert "551 Not running in server mode\r\n552 Not running in server mode\r\n" in text
        assert "551 GeoIP data not loaded" in text
        assert '552 Unrecognized key "no/such/key"' in text


@run_in_loop
async def test_signals_and_ownership(tmp_path: Path) -> None:
    async with control(tmp_path, CookieAuthentication=0) as h:
        got = await h.talk(
            _authenticate("") + b"SETEVENTS SIGNAL NOTICE\r\nSIGNAL DUMP\r\nSIGNAL BOGUS\r\n"
            b"SIGNAL NEWNYM\r\nSIGNAL NEWNYM\r\nQUIT\r\n",
            until=b"closing connection",
        )
        text = got.decode()
        assert "650 NOTICE Statistics: test\r\n" in text
        assert "650 SIGNAL DUMP\r\n" in text
        assert '552 Unrecognized signal code "BOGUS"' in text
        assert text.count("650 SIGNAL NEWNYM") == 1  # the second waits 10 s (rate limit)
        assert "650 NOTICE Rate limiting NEWNYM request: delaying by 10 second(s)" in text
        await h.talk(_authenticate("") + b"TAKEOWNERSHIP\r\nQUIT\r\n", until=b"closing")
        await asyncio.sleep(0.1)
        assert h.stopped == ["Owning controller connection has closed -- exiting now."]
        await h.talk(_authenticate("") + b"SIGNAL HALT\r\n", until=b"250 OK")
        assert h.stopped[-1].startswith("Received HALT signal")


@run_in_loop
async def test_limits(tmp_path: Path) -> None:
    async with control(tmp_path, CookieAuthentication=0) as h:
        got = await h.talk(b"GETINFO " + b"x" * 100_000 + b"\r\n")
        assert got == b"500 Line too long.\r\n"
        got = await h.talk(bytes(b for b in range(256) if b != 10) + b"\r\n")
        assert got == b"514 Authentication required.\r\n"
        # Many commands in one write are answered in order, one at a time.
        got = await h.talk(
            _authenticate("") + b"GETINFO dormant\r\n" * 500 + b"QUIT\r\n",
            until=b"closing connection",
        )
        assert got.count(b"250-dormant=0\r\n") == 500


def test_a_control_port_in_use_stops_start_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    from puretor.app.daemon import run_daemon

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [
            "--SocksPort", "127.0.0.1:auto",
            "--ControlPort", str(port),
            "--CookieAuthentication", "1",
            "--DataDirectory", str(tmp_path / "data"),
            "--TestingTorNetwork", "1",
            "--DirAuthority", AUTH,
            "--Log", "notice stdout",
        ]  # fmt: skip
        logger = logging.getLogger("puretor")
        saved = (list(logger.handlers), logger.level, logger.propagate)
        try:
            assert run_daemon(argv, version="x") == 1
        finally:  # run_daemon set logging up for a daemon: put the test's back
            logger.handlers[:] = saved[0]
            logger.setLevel(saved[1])
            logger.propagate = saved[2]
    out = capsys.readouterr().out
    assert "[err] Could not open the control port: Address already in use." in out
    assert "Bootstrapped" not in out


async def _session(h: Harness, commands: bytes, replies: int) -> list[bytes]:
    """Authenticate (cookie), send ``commands``, and return the reply lines of the next
    ``replies`` final lines (``NNN `` with a space) after the AUTHENTICATE reply."""
    cookie = (Path(h.server.cookie_file or "")).read_bytes().hex()
    got = await h.talk(
        _authenticate(cookie) + commands + b"QUIT\r\n", until=b"250 closing connection"
    )
    return got.split(b"\r\n")[1:-2]


@run_in_loop
async def test_mapaddress_replies_and_address_mappings(tmp_path: Path) -> None:
    async with control(tmp_path, CookieAuthentication=1, MapAddress="a.test b.test") as h:
        lines = await _session(
            h,
            b"MAPADDRESS x.test=target.test 0.0.0.0=target.test .=y.onion bad.test=no/way\r\n"
            b"GETINFO address-mappings/config\r\n"
            b"MAPADDRESS nothing\r\n",
            3,
        )
        assert lines[0] == b"250-x.test=target.test"
        virtual_ip, _, target = lines[1][4:].partition(b"=")
        assert virtual_ip.startswith(b"127.") and target == b"target.test"
        assert lines[2].endswith(b".virtual=y.onion") and lines[2].startswith(b"250-")
        assert lines[3] == b"512 syntax error: invalid address 'no/way'"
        assert lines[4:6] == [b"250-address-mappings/config=a.test b.test NEVER", b"250 OK"]
        assert lines[6].startswith(b"512 syntax error: mapping 'nothing'")
        tor = h.server.tor
        assert tor.address_map.rewrite("x.test") == "target.test"
        assert tor.address_map.rewrite(virtual_ip.decode()) == "target.test"


@run_in_loop
async def test_saveconf_writes_the_torrc_and_loadconf_replaces_it(tmp_path: Path) -> None:
    async with control(tmp_path, CookieAuthentication=1) as h:
        torrc = tmp_path / "torrc"
        torrc.write_text("# the user's own file\n")
        lines = await _session(h, b"SETCONF SafeSocks=1\r\nSAVECONF\r\n", 2)
        assert lines == [b"250 OK", b"250 OK"]
        saved = torrc.read_text()
        assert saved.startswith("# This file was generated by Tor; if you edit it")
        assert "\nSafeSocks 1\n" in saved and "\nCookieAuthentication 1\n" in saved
        assert (tmp_path / "torrc.orig.1").read_text() == "# the user's own file\n"
        # LOADCONF: the saved text with one live change applies; DataDirectory may not move.
        text = saved.replace("SafeSocks 1", "SafeSocks 0").replace("\n", "\r\n")
        lines = await _session(
            h, b"+LOADCONF\r\n" + text.encode() + b".\r\nGETCONF SafeSocks\r\n", 2
        )
        assert lines == [b"250 OK", b"250 SafeSocks=0"]
        moved = saved.replace(f"DataDirectory {tmp_path / 'data'}", "DataDirectory /elsewhere")
        lines = await _session(h, b"+LOADCONF\r\n" + moved.encode() + b"\r\n.\r\n", 1)
        assert lines[0].startswith(b"553 Transition not allowed: puretor applies DataDirectory")
        lines = await _session(h, b"+LOADCONF\r\nNoSuchOption 1\r\n.\r\n", 1)
        assert lines[0].startswith(b"552 Invalid config file: ")


@run_in_loop
async def test_circuit_stream_and_guard_commands_on_unknown_ids(tmp_path: Path) -> None:
    async with control(tmp_path, CookieAuthentication=1) as h:
        lines = await _session(
            h,
            b"SETCIRCUITPURPOSE 77 purpose=controller\r\n"
            b"SETCIRCUITPURPOSE 77 purpose=hsservice\r\n"
            b"REDIRECTSTREAM 5 example.com 80\r\n"
            b"REDIRECTSTREAM 5 example.com 99999\r\n"
            b"EXTENDCIRCUIT 77 $" + b"A" * 40 + b"\r\n"
            b"EXTENDCIRCUIT 0 $" + b"A" * 40 + b" purpose=hsservice\r\n"
            b"DROPGUARDS\r\n"
            b"GETINFO net/listeners/socks net/listeners/dns\r\n",
            8,
        )
        assert lines[0].startswith(b'552 Unknown circuit "77"')
        assert lines[1] == b'552 Unknown purpose "hsservice"'
        assert lines[2] == b'552 Unknown stream "5"'
        assert lines[3] == b'512 Cannot parse port "99999"'
        assert lines[4].startswith(b'552 Unknown circuit "77"')
        assert lines[5] == b'552 Unknown purpose "hsservice"'
        assert lines[6] == b"250 OK"
        assert lines[7:10] == [
            b'250-net/listeners/socks="127.0.0.1:9050"',
            b"250-net/listeners/dns=",
            b"250 OK",
        ]


@run_in_loop
async def test_add_onion_refuses_bad_arguments(tmp_path: Path) -> None:
    """ADD_ONION / DEL_ONION argument errors get control-spec codes, before any service
    starts (a good request would wait for the bootstrap: tests/integration)."""
    async with control(tmp_path, CookieAuthentication=0) as h:
        cases = [
            (b"ADD_ONION", b"512 Missing argument"),
            (b"ADD_ONION NEW:RSA1024 Port=80", b"513 Invalid key type"),
            (b"ADD_ONION RSA1024:AAAA Port=80", b"513 Invalid key type: v2"),
            (b"ADD_ONION ED25519-V3:not-base64! Port=80", b"512 Failed to decode"),
            (b"ADD_ONION ED25519-V3:" + b"QUFB" * 4 + b" Port=80", b"512 Failed to decode"),
            (b"ADD_ONION NEW:BEST", b"512 Missing 'Port'"),
            (b"ADD_ONION NEW:BEST Port=0", b"512 Invalid VIRTPORT"),
            (b"ADD_ONION NEW:BEST Port=80,example.com:80", b"512 Invalid VIRTPORT"),
            (b"ADD_ONION NEW:BEST Port=80 Port=80,81", b"512 Several targets"),
            (b"ADD_ONION NEW:BEST Flags=Bogus Port=80", b"512 Invalid 'Flags'"),
            (b"ADD_ONION NEW:BEST MaxStreams=x Port=80", b"512 Invalid MaxStreams"),
            (b"ADD_ONION NEW:BEST ClientAuth=bob Port=80", b"513 ClientAuth is for v2"),
            (b"ADD_ONION NEW:BEST Port=80 ClientAuthV3=short", b"512 "),
            (b"ADD_ONION NEW:BEST Port=80 Junk", b"513 Invalid argument"),
            (b"DEL_ONION", b"512 DEL_ONION takes one argument"),
            (b"DEL_ONION " + b"a" * 56, b"552 Unknown Onion Service id"),
            (b"GETINFO onions/current onions/detached", b"250-onions/current=\r\n"),
        ]
        for request, expected in cases:
            got = await h.talk(
                _authenticate('""') + request + b"\r\nQUIT\r\n", until=b"closing connection"
            )
            reply = got.split(b"\r\n", 1)[1]
            assert reply.startswith(expected), (request, reply)


def test_hs_desc_event_lines() -> None:
    from puretor.aio.observe import OnionDescriptorEvent, RelayRef
    from puretor.app.control.formats import event_text

    hsdir = RelayRef("AB" * 20, "relay1")
    upload = OnionDescriptorEvent("UPLOAD", "x" * 56, hsdir, "blindedkey", upload=True)
    assert event_text(upload) == (
        "HS_DESC",
        f"UPLOAD {'x' * 56} UNKNOWN ${'AB' * 20}~relay1 blindedkey",
    )
    done = OnionDescriptorEvent("UPLOADED", "x" * 56, hsdir, "blindedkey", upload=True)
    assert event_text(done) == ("HS_DESC", f"UPLOADED {'x' * 56} UNKNOWN ${'AB' * 20}~relay1")
    failed = OnionDescriptorEvent("FAILED", "x" * 56, hsdir, "k", "UPLOAD_REJECTED", upload=True)
    assert event_text(failed)[1].endswith(" REASON=UPLOAD_REJECTED")  # type: ignore[index]
