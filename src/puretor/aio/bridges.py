"""Bridges (UseBridges 1): learn each configured bridge's keys from the bridge itself.

A bridge is in no consensus.  For each ``Bridge`` line we open a channel to it - which proves
the line's fingerprint in the link handshake - build a one-hop CREATE_FAST circuit and fetch
``/tor/server/authority`` over BEGIN_DIR, as C tor does (bridges.c, fetch_bridge_descriptors).
The verified descriptor gives the bridge's ntor and ed25519 keys; the bridge then becomes a
guard candidate (`GuardManager.set_bridges`) and a directory source.  Nothing here ever
connects anywhere but to a configured bridge, and `allows` is what the channel allow-check
asks with UseBridges set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from puretor.aio.channel import ChannelManager, ChannelTarget
from puretor.aio.circuit import HopSpec, build_circuit
from puretor.aio.dirclient import fetch_raw
from puretor.config.values import BridgeLine
from puretor.dir.http import HttpResponseParser, build_request
from puretor.dir.netdir import Relay
from puretor.dir.routerdesc import MAX_DESCRIPTOR, bridge_relay, parse_router_descriptor
from puretor.errors import (
    ChannelError,
    CircuitError,
    DirectoryError,
    DocumentError,
    ProtocolError,
)

log = logging.getLogger("puretor.bridges")
NOTICE = 25

DESCRIPTOR_PATH = "/tor/server/authority"
FETCH_TIMEOUT = 30.0
# C tor refetches a bridge's descriptor about every 12 hours (bridges.c); after a failure it
# retries on a short schedule, here 5 s doubling up to 5 minutes.
REFETCH_INTERVAL = 12 * 3600.0
RETRY_MIN, RETRY_MAX = 5.0, 300.0


class BridgeDescriptorError(DirectoryError):
    """A bridge served a descriptor that does not parse, or that is not its own."""


class BridgeSet:
    """The configured bridges and what we learned about them."""

    def __init__(
        self,
        lines: Sequence[BridgeLine],
        chanmgr: ChannelManager,
        on_problem: Callable[[Exception, ChannelTarget], None] = lambda exc, target: None,
        on_progress: Callable[[str], None] = lambda tag: None,
    ) -> None:
        self.lines = tuple(lines)
        self.chanmgr = chanmgr
        self.on_problem = on_problem
        self.on_progress = on_progress
        self.relays: dict[bytes, Relay] = {}  # described bridges, by RSA identity
        self.fetched_at: dict[bytes, float] = {}
        self.failures: dict[BridgeLine, int] = {}
        self.next_try: dict[BridgeLine, float] = {}
        self.last_error: str | None = None
        self.learned: dict[BridgeLine, bytes] = {}  # identities of lines without fingerprint

    def expected_id(self, line: BridgeLine) -> bytes | None:
        """The identity the bridge must prove: its fingerprint, else the one it proved."""
        return line.rsa_id or self.learned.get(line)

    def target_for(self, line: BridgeLine) -> ChannelTarget:
        """Without a known identity: any (b""), which the channel then proves."""
        return ChannelTarget(line.address, line.port, self.expected_id(line) or b"", None, "")

    def allows(self, target: ChannelTarget) -> str | None:
        """The channel allow-check with UseBridges: a configured bridge, at the address and
        port of its line, with its identity; nothing else."""
        return (
            None
            if self.line_for(target) is not None
            else ("UseBridges is set: only configured bridges may be connected to")
        )

    def line_for(self, target: ChannelTarget) -> BridgeLine | None:
        """The Bridge line a connection to `target` is for (None: not a bridge)."""
        for line in self.lines:
            expected = self.expected_id(line)
            if (target.address, target.or_port) == (line.address, line.port) and (
                expected is None or expected == target.rsa_id
            ):
                return line
        return None

    @property
    def described(self) -> list[Relay]:
        return list(self.relays.values())

    def due(self, now: float) -> list[BridgeLine]:
        """Lines whose descriptor we need (or need again) now."""
        out = []
        for line in self.lines:
            rsa = self.expected_id(line) or b""
            if now < self.next_try.get(line, 0.0):
                continue
            if rsa in self.relays and now - self.fetched_at.get(rsa, 0.0) < REFETCH_INTERVAL:
                continue
            out.append(line)
        return out

    def next_wakeup(self) -> float:
        return min(self.next_try.values(), default=time.time() + RETRY_MIN)

    async def fetch_due(self) -> bool:
        """Fetch every due descriptor at once; True if one new or changed bridge arrived."""
        lines = self.due(time.time())
        if not lines:
            return False
        results = await asyncio.gather(*(self._fetch_one(line) for line in lines))
        return any(results)

    async def _fetch_one(self, line: BridgeLine) -> bool:
        target = self.target_for(line)
        try:
            relay = await self.fetch_descriptor(line)
        except (TimeoutError, ChannelError, CircuitError, DirectoryError, ProtocolError) as exc:
            n = self.failures.get(line, 0) + 1
            self.failures[line] = n
            self.next_try[line] = time.time() + min(RETRY_MAX, RETRY_MIN * 2 ** (n - 1))
            self.last_error = f"{line.describe()}: {exc}"
            if isinstance(exc, DirectoryError | BridgeDescriptorError):
                log.warning("Could not use the descriptor of %s: %s", line.describe(), exc)
            elif isinstance(exc, ChannelError) and exc.reason == "IDENTITY":
                # C tor: "it's a bridge, it's either a misconfiguration, or unexpected".
                log.warning(
                    "Tried connecting to router at %s:%d, but its identity key was not as "
                    "expected: wanted $%s (the Bridge line's fingerprint). %s",
                    line.address,
                    line.port,
                    line.fingerprint,
                    exc.warning or exc,
                )
            self.on_problem(exc, target)
            return False
        self.failures.pop(line, None)
        self.next_try.pop(line, None)
        if line.rsa_id is None:
            self.learned[line] = relay.rsa_id
        old = self.relays.get(relay.rsa_id)
        self.relays[relay.rsa_id] = relay
        self.fetched_at[relay.rsa_id] = time.time()
        if old is None:
            # C tor: "new bridge descriptor 'NICK' (fresh): $FP~NICK at ADDR"
            log.log(
                NOTICE,
                "new bridge descriptor '%s' (fresh): $%s~%s at %s",
                relay.nickname,
                relay.fingerprint,
                relay.nickname,
                line.address,
            )
        return old != relay

    async def fetch_descriptor(self, line: BridgeLine) -> Relay:
        """Connect to the bridge, one-hop CREATE_FAST, GET /tor/server/authority."""
        target = self.target_for(line)
        self.on_progress("conn_pt" if line.transport else "conn")
        channel = await self.chanmgr.get_channel(target)
        proven = channel.identity.rsa_id if channel.identity is not None else None
        if line.rsa_id is None and proven is not None and line not in self.learned:
            # C tor's learned_router_identity.
            log.log(
                NOTICE,
                "Learned fingerprint %s for bridge %s:%d%s.",
                proven.hex().upper(),
                line.address,
                line.port,
                f" (with transport '{line.transport}')" if line.transport else "",
            )
        if line.transport:
            self.on_progress("conn_done_pt")
        self.on_progress("handshake_done")
        handle = await build_circuit(self.chanmgr, [HopSpec(target, None)], timeout=FETCH_TIMEOUT)
        try:
            self.on_progress("onehop_create")
            raw = await fetch_raw(
                handle,
                build_request(DESCRIPTOR_PATH),
                timeout=FETCH_TIMEOUT,
                max_size=MAX_DESCRIPTOR + 4096,
            )
        finally:
            handle.close()
        parser = HttpResponseParser()
        parser.feed(raw)
        resp = parser.finish()
        if resp.status != 200:
            raise DirectoryError(
                f"{line.describe()} answered HTTP {resp.status} {resp.reason} for its descriptor"
            )
        try:
            desc = parse_router_descriptor(resp.body, self.expected_id(line) or proven)
        except DocumentError as exc:
            raise BridgeDescriptorError(str(exc)) from exc
        return bridge_relay(desc, line.address, line.port)
