"""The client's events and state as control-spec text (§4.1 events, GETINFO values)."""

from __future__ import annotations

import base64
import time
from typing import Any

from puretor.client import (
    BandwidthEvent,
    BootstrapEvent,
    ChannelEvent,
    CircuitEvent,
    HsDescEvent,
    StreamBandwidthEvent,
    StreamEvent,
)
from puretor.proto.control import quote


def iso_time(stamp: float, fraction: bool = True) -> str:
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp))
    return f"{text}.{int(stamp % 1 * 1e6):06d}" if fraction else text


def circuit_line(ev: CircuitEvent) -> str:
    """``ID STATUS [PATH] BUILD_FLAGS=.. PURPOSE=.. TIME_CREATED=.. [REASON=..]``."""
    words = [str(ev.id), ev.status]
    if ev.path:
        words.append(",".join(str(r) for r in ev.path))
    if ev.build_flags:
        words.append("BUILD_FLAGS=" + ",".join(ev.build_flags))
    words.append(f"PURPOSE={ev.purpose}")
    if ev.time_created:
        words.append(f"TIME_CREATED={iso_time(ev.time_created)}")
    if ev.reason:
        words.append(f"REASON={ev.reason}")
    if ev.remote_reason:
        words.append(f"REMOTE_REASON={ev.remote_reason}")
    return " ".join(words)


def stream_line(ev: StreamEvent, *, event: bool = True) -> str:
    words = [str(ev.id), ev.status, str(ev.circuit_id), ev.target]
    if event:
        if ev.reason:
            words.append(f"REASON={ev.reason}")
        if ev.remote_reason:
            words.append(f"REMOTE_REASON={ev.remote_reason}")
        if ev.source_address:
            words.append(f"SOURCE_ADDR={ev.source_address}")
        words.append(f"PURPOSE={ev.purpose}")
    return " ".join(words)


def channel_line(ev: ChannelEvent, *, event: bool = True) -> str:
    words = [str(ev.relay), ev.status]
    if event:
        if ev.reason:
            words.append(f"REASON={ev.reason}")
        words.append(f"ID={ev.id}")
    return " ".join(words)


def bootstrap_status(ev: BootstrapEvent) -> str:
    """``NOTICE BOOTSTRAP PROGRESS=.. TAG=.. SUMMARY=".."`` (status/bootstrap-phase)."""
    return f"NOTICE BOOTSTRAP PROGRESS={ev.percent} TAG={ev.tag} SUMMARY={quote(ev.summary)}"


def event_text(ev: Any) -> tuple[str, str] | None:
    """(event name, its text after the name) for a client event, or None."""
    if isinstance(ev, CircuitEvent):
        return "CIRC", circuit_line(ev)
    if isinstance(ev, StreamEvent):
        return "STREAM", stream_line(ev)
    if isinstance(ev, ChannelEvent):
        return "ORCONN", channel_line(ev)
    if isinstance(ev, BandwidthEvent):
        return "BW", f"{ev.read} {ev.written}"
    if isinstance(ev, StreamBandwidthEvent):
        return "STREAM_BW", f"{ev.id} {ev.written} {ev.read} {iso_time(time.time())}"
    if isinstance(ev, BootstrapEvent):
        return "STATUS_CLIENT", bootstrap_status(ev)
    if isinstance(ev, HsDescEvent):
        return "HS_DESC", hs_desc_line(ev)
    return None


def hs_desc_line(ev: HsDescEvent) -> str:
    """C tor's HS_DESC UPLOAD / UPLOADED / FAILED lines for a service's uploads."""
    line = f"{ev.action} {ev.address} UNKNOWN {ev.hsdir}"
    if ev.action == "UPLOAD":
        line += f" {ev.descriptor_id}"
    elif ev.action == "FAILED":
        line += f" REASON={ev.reason or 'UNEXPECTED'}"
    return line


def router_status(relay: Any, valid_after: float | None) -> str:
    """A relay's entry as ``GETINFO ns/*`` gives it (an ``r``, ``s`` and ``w`` line)."""
    identity = base64.b64encode(relay.rsa_id).decode().rstrip("=")
    digest = base64.b64encode(relay.md_digest[:20] or bytes(20)).decode().rstrip("=")
    published = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(valid_after or 0))
    lines = [
        f"r {relay.nickname} {identity} {digest} {published} {relay.address} "
        f"{relay.or_port} {relay.dir_port}"
    ]
    if relay.ipv6 is not None:
        lines.append(f"a [{relay.ipv6[0]}]:{relay.ipv6[1]}")
    lines.append("s " + " ".join(sorted(relay.flags)))
    lines.append(f"w Bandwidth={relay.bandwidth}" + (" Unmeasured=1" if relay.unmeasured else ""))
    return "\n".join(lines)
