"""The client's events and state as control-spec text (§4.1 events, GETINFO values)."""

from __future__ import annotations

import base64
import time
from typing import Any

from puretor.client import (
    BandwidthEvent,
    BootstrapEvent,
    BuildTimeoutEvent,
    ChannelEvent,
    CircuitBandwidthEvent,
    CircuitEvent,
    GeneralStatusEvent,
    GuardEvent,
    NetworkLivenessEvent,
    OnionDescriptorEvent,
    StreamBandwidthEvent,
    StreamEvent,
)
from puretor.proto.control import quote

MINOR_STATUSES = frozenset({"PURPOSE_CHANGED", "CANNIBALIZED"})  # CIRC_MINOR, not CIRC


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
    if ev.old_purpose:
        words.append(f"OLD_PURPOSE={ev.old_purpose}")
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


def hs_desc_line(ev: OnionDescriptorEvent) -> str:
    """HS_DESC's text as C tor writes it (control_events.c): REQUESTED with HSDIR_INDEX,
    FAILED with REASON; a service's uploads with the auth type UNKNOWN, the descriptor id
    only on UPLOAD."""
    if ev.upload:
        line = f"{ev.action} {ev.address} UNKNOWN {ev.hsdir}"
        if ev.action == "UPLOAD":
            return f"{line} {ev.descriptor_id}"
        if ev.action == "FAILED":
            return f"{line} REASON={ev.reason or 'UNEXPECTED'}"
        return line
    head = f"{ev.action} {ev.address} NO_AUTH {ev.hsdir}"
    if ev.action == "REQUESTED":
        index = f" HSDIR_INDEX={ev.hsdir_index}" if ev.hsdir_index else ""
        return f"{head} {ev.descriptor_id}{index}"
    reason = f" REASON={ev.reason}" if ev.reason else ""
    return f"{head} {ev.descriptor_id}{reason}"


def hs_desc_content(ev: OnionDescriptorEvent) -> tuple[str, str]:
    """HS_DESC_CONTENT's first line and data: the descriptor, or after a failure one empty
    line (C tor's write_escaped_data ends even empty data with CRLF before the ".")."""
    return f"HS_DESC_CONTENT {ev.address} {ev.descriptor_id} {ev.hsdir}", ev.content or "\n"


def event_text(ev: Any) -> tuple[str, str] | None:
    """(event name, its text after the name) for a client event, or None."""
    if isinstance(ev, CircuitEvent):
        return ("CIRC_MINOR" if ev.status in MINOR_STATUSES else "CIRC"), circuit_line(ev)
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
    if isinstance(ev, CircuitBandwidthEvent):
        stamp = iso_time(time.time())
        return "CIRC_BW", f"ID={ev.id} READ={ev.read} WRITTEN={ev.written} TIME={stamp}"
    if isinstance(ev, GuardEvent):
        return "GUARD", f"ENTRY {ev.relay} {ev.status}"
    if isinstance(ev, NetworkLivenessEvent):
        return "NETWORK_LIVENESS", "UP" if ev.up else "DOWN"
    if isinstance(ev, BuildTimeoutEvent):
        return "BUILDTIMEOUT_SET", buildtimeout_text(ev)
    if isinstance(ev, GeneralStatusEvent):
        words = [ev.severity, ev.action, *(f"{k}={v}" for k, v in ev.arguments)]
        return "STATUS_GENERAL", " ".join(words)
    if isinstance(ev, OnionDescriptorEvent):
        return "HS_DESC", hs_desc_line(ev)
    return None


def buildtimeout_text(ev: BuildTimeoutEvent) -> str:
    """``COMPUTED TOTAL_TIMES=.. TIMEOUT_MS=..`` as C tor prints it (puretor closes a
    build at its timeout, so CLOSE_MS/CLOSE_RATE equal TIMEOUT_MS/TIMEOUT_RATE)."""
    timeout_ms = round(ev.timeout * 1000)
    return (
        f"COMPUTED TOTAL_TIMES={ev.total_times} TIMEOUT_MS={timeout_ms} "
        f"XM={round(ev.xm * 1000)} ALPHA={ev.alpha:f} CUTOFF_QUANTILE={ev.quantile:f} "
        f"TIMEOUT_RATE={ev.timeout_rate:f} CLOSE_MS={timeout_ms} CLOSE_RATE={ev.timeout_rate:f}"
    )


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
