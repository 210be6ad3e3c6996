"""The control port's onion-client side against C tor onion services on the private network:
stem's get_hidden_service_descriptor() (HSFETCH, HS_DESC, HS_DESC_CONTENT), and client
authorization added, listed and removed at run time (ONION_CLIENT_AUTH_*) while curl
reaches the client-auth service through the SOCKS port.  One tor-client daemon."""

from __future__ import annotations

import base64
import queue
import time
from pathlib import Path
from typing import Any

import pytest
import stem
import stem.control
from nacl.signing import SigningKey
from stem.control import EventType
from test_zz_hardening_helpers import curl_via, start_daemon

from puretor.hs.address import encode_onion_address
from puretor.proto.controlauth import hash_password

pytestmark = [pytest.mark.testnet, pytest.mark.timeout(300)]

PASSWORD = "onion pw"


def _ask(controller: stem.control.Controller, line: str) -> str:
    """The raw reply text (status line(s) joined by newlines)."""
    return str(controller.msg(line).raw_content()).replace("\r\n", "\n").strip()


@pytest.mark.options("ClientOnionAuthDir")
def test_hsfetch_and_client_auth_through_the_control_port(testnet: Any, tmp_path: Path) -> None:
    info = testnet.info
    plain = info["onion"]["plain"]
    authed = info["onion"]["client_auth"]
    auth_dir = tmp_path / "onion-auth"
    auth_dir.mkdir(mode=0o700)
    started = time.monotonic()
    client = start_daemon(
        info,
        tmp_path,
        [
            "SocksPort 127.0.0.1:auto",
            "ControlPort 127.0.0.1:auto",
            f"ControlPortWriteToFile {tmp_path / 'control-port'}",
            f"HashedControlPassword {hash_password(PASSWORD.encode())}",
            f"ClientOnionAuthDir {auth_dir}",
            "Log info stdout",
        ],
        audit=False,
    )
    try:
        port = int((tmp_path / "control-port").read_text().split(":")[-1])
        with stem.control.Controller.from_port(port=port) as controller:
            controller.authenticate(password=PASSWORD)

            # -- HSFETCH through stem: REQUESTED, then RECEIVED, and the descriptor.
            events: queue.Queue[Any] = queue.Queue()
            controller.add_event_listener(events.put, EventType.HS_DESC)
            address = plain["address"].removesuffix(".onion")
            t0 = time.monotonic()
            for attempt in range(3):
                # Right after the network starts, the service may still be publishing to
                # the HSDirs this client's consensus names: ask again, as a user would.
                try:
                    desc = controller.get_hidden_service_descriptor(address, timeout=90)
                    break
                except stem.DescriptorUnavailable:
                    if attempt == 2:
                        raise
                    time.sleep(10)
                    while not events.empty():
                        events.get_nowait()
            fetch_s = time.monotonic() - t0
            assert str(desc).startswith("hs-descriptor 3\n"), str(desc)[:200]
            seen = []
            while not events.empty():
                seen.append(events.get_nowait())
            actions = [e.action for e in seen if e.address == address]
            assert actions and actions[0] == "REQUESTED" and actions[-1] == "RECEIVED", seen
            requested = next(e for e in seen if e.action == "REQUESTED")
            received = next(e for e in seen if e.action == "RECEIVED")
            hsdirs = {r["fingerprint"] for r in info["relays"] + info["authorities"]}
            assert received.directory_fingerprint in hsdirs
            assert (
                len(received.descriptor_id) == 43
                and received.descriptor_id == requested.descriptor_id
            )
            assert requested.authentication == "NO_AUTH" and len(requested.index) == 64
            # ... and from a chosen HSDir with SERVER=.
            desc = controller.get_hidden_service_descriptor(
                address, servers=[received.directory_fingerprint], timeout=90
            )
            assert str(desc).startswith("hs-descriptor 3\n")
            # A service that never published: every HSDir answers 404 (FAILED NOT_FOUND),
            # which stem reports as DescriptorUnavailable.
            nowhere = encode_onion_address(bytes(SigningKey(b"\x07" * 32).verify_key))
            with pytest.raises(stem.DescriptorUnavailable, match="No running hidden service"):
                controller.get_hidden_service_descriptor(nowhere, timeout=90)
            failed = []
            while not events.empty():
                event = events.get_nowait()
                if event.address == nowhere.removesuffix(".onion") and event.action == "FAILED":
                    failed.append(event.reason)
            assert failed and set(failed) == {"NOT_FOUND"}, failed
            controller.remove_event_listener(events.put)

            # -- client authorization at run time.  Without the key the descriptor is still
            # received (as C tor: only its inner layer needs the key), but curl fails.
            label = authed["address"].removesuffix(".onion")
            locked = controller.get_hidden_service_descriptor(label, timeout=90)
            assert str(locked).startswith("hs-descriptor 3\n")
            target = f"http://{authed['address']}/"
            without = curl_via(client, target, timeout=60)
            assert without.returncode != 0, without
            key = base64.b32decode(authed["private_key_b32"].upper() + "====")
            key_b64 = base64.b64encode(key).decode()
            assert _ask(controller, f"ONION_CLIENT_AUTH_VIEW {label}") == (
                f"250-ONION_CLIENT_AUTH_VIEW {label}\n250 OK"
            )
            # The descriptor fetched for that curl is kept (as C tor keeps it): the key
            # decrypts it at once.
            assert (
                _ask(
                    controller,
                    f"ONION_CLIENT_AUTH_ADD {label} x25519:{key_b64} ClientName=alice Flags=Permanent",
                )
                == "252 Registered client and decrypted desc"
            )
            assert _ask(controller, "ONION_CLIENT_AUTH_VIEW") == (
                "250-ONION_CLIENT_AUTH_VIEW\n"
                f"250-CLIENT {label} x25519:{key_b64} Flags=Permanent ClientName=alice\n250 OK"
            )
            stored = auth_dir / f"{label}.auth_private"
            # C tor's file: lower-case base32 key, no newline.
            assert stored.read_text() == f"{label}:descriptor:x25519:" + (
                base64.b32encode(key).decode().rstrip("=").lower()
            )
            with_key = curl_via(client, target, timeout=90)
            assert with_key.returncode == 0, with_key
            assert with_key.stdout.decode() == authed["index_text"]

            assert _ask(controller, f"ONION_CLIENT_AUTH_REMOVE {label}") == "250 OK"
            assert _ask(controller, f"ONION_CLIENT_AUTH_REMOVE {label}") == (
                f'251 No credentials for "{label}"'
            )
            assert (
                _ask(controller, "ONION_CLIENT_AUTH_VIEW") == "250-ONION_CLIENT_AUTH_VIEW\n250 OK"
            )
            assert not stored.exists()
        print(
            f"control onion: descriptor fetch {fetch_s:.1f}s, "
            f"whole test {time.monotonic() - started:.1f}s"
        )
    finally:
        client.stop()
