"""The service side (puretor.hs.service) against the client side that already exists."""

from __future__ import annotations

import secrets

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from puretor.hs.address import parse_onion_address
from puretor.hs.descriptor import decode_descriptor
from puretor.hs.keys import blind_public_key, subcredential
from puretor.hs.ntor import build_introduce1, complete_rendezvous, hs_mac
from puretor.hs.service import (
    ESTABLISH_INTRO_SIG_PREFIX,
    IntroductionError,
    IntroPointKeys,
    ReplayCache,
    ServiceIdentity,
    SigningKey,
    build_descriptor,
    build_establish_intro,
    curve25519_to_ed25519,
    expand_seed,
    parse_introduce2,
    parse_public_key_file,
    public_from_expanded,
    sign_expanded,
)
from puretor.proto.relaymsg import ls_ed_id, ls_ipv4, ls_rsa_id

RP_SPECS = [ls_ipv4("10.0.0.7", 9001), ls_rsa_id(bytes(range(20))), ls_ed_id(bytes(32))]


def test_expanded_key_signs_like_rfc8032() -> None:
    seed = bytes(range(32))
    reference = Ed25519PrivateKey.from_private_bytes(seed)
    expanded = expand_seed(seed)
    public = public_from_expanded(expanded)
    assert public == reference.public_key().public_bytes_raw()
    # Ed25519 is deterministic: the same signature as the reference implementation.
    assert sign_expanded(expanded, public, b"hello") == reference.sign(b"hello")


def test_key_files_round_trip_and_keep_the_address() -> None:
    ident = ServiceIdentity.generate()
    again = ServiceIdentity.from_secret_key_file(ident.secret_key_file())
    assert again.public == ident.public and again.address == ident.address
    assert parse_public_key_file(ident.public_key_file()) == ident.public
    assert ident.secret_key_file().startswith(b"== ed25519v1-secret: type0 ==\0\0\0")
    assert len(ident.secret_key_file()) == 96
    assert parse_onion_address(ident.hostname_file().decode().strip()) == ident.public
    with pytest.raises(ValueError):
        ServiceIdentity.from_secret_key_file(b"garbage" * 20)


def test_blinded_secret_key_matches_the_public_blinding_and_signs() -> None:
    ident = ServiceIdentity.generate()
    blinded = ident.blinded(20000, 1440)
    assert blinded.public == blind_public_key(ident.public, 20000, 1440)
    assert blinded.subcredential == subcredential(ident.public, blinded.public)
    sig = sign_expanded(blinded.expanded, blinded.public, b"message")
    Ed25519PublicKey.from_public_bytes(blinded.public).verify(sig, b"message")


def test_curve_to_ed_conversion_is_a_valid_point() -> None:
    ip = IntroPointKeys.generate(RP_SPECS, bytes(32))
    Ed25519PublicKey.from_public_bytes(curve25519_to_ed25519(ip.enc_public))


def _service() -> tuple[ServiceIdentity, list[IntroPointKeys], bytes]:
    ident = ServiceIdentity.generate()
    ips = [IntroPointKeys.generate(RP_SPECS, secrets.token_bytes(32)) for _ in range(3)]
    blinded = ident.blinded(20000, 1440)
    desc = build_descriptor(blinded, SigningKey.generate(), ips, 7, now=1_700_000_000)
    return ident, ips, desc


def test_descriptor_decodes_with_the_client_parser() -> None:
    ident, ips, desc = _service()
    blinded = blind_public_key(ident.public, 20000, 1440)
    parsed = decode_descriptor(
        desc,
        blinded_key=blinded,
        subcredential=subcredential(ident.public, blinded),
        now=1_700_000_100,
    )
    assert parsed.revision_counter == 7
    assert [p.auth_key for p in parsed.intro_points] == [ip.auth.public for ip in ips]
    assert [p.enc_key for p in parsed.intro_points] == [ip.enc_public for ip in ips]
    assert parsed.intro_points[0].link_specifiers == tuple(RP_SPECS)
    assert len(desc) < 50_000


def test_establish_intro_mac_and_signature() -> None:
    ip = IntroPointKeys.generate(RP_SPECS, bytes(32))
    kh = secrets.token_bytes(20)
    body = build_establish_intro(ip, kh)
    head, sig = body[:-66], body[-64:]
    assert body[-66:-64] == b"\x00\x40"
    assert head[3:35] == ip.auth.public
    assert head[-32:] == hs_mac(kh, head[:-32])
    Ed25519PublicKey.from_public_bytes(ip.auth.public).verify(
        sig, ESTABLISH_INTRO_SIG_PREFIX + head
    )


def test_hs_ntor_round_trip_with_the_client() -> None:
    ident = ServiceIdentity.generate()
    ip = IntroPointKeys.generate(RP_SPECS, bytes(32))
    current, nxt = ident.blinded(20000, 1440), ident.blinded(20001, 1440)
    cookie = secrets.token_bytes(20)
    rp_key = secrets.token_bytes(32)
    state, body = build_introduce1(
        ip.auth.public,
        ip.enc_public,
        nxt.subcredential,
        cookie,
        rp_key,
        RP_SPECS,
        extensions=[(1, b"")],
    )
    intro = parse_introduce2(body, {ip.auth.public: ip}, [current.subcredential, nxt.subcredential])
    assert intro.rendezvous_cookie == cookie and intro.rp_onion_key == rp_key
    assert intro.rp_link_specifiers == tuple(RP_SPECS)
    assert intro.extensions == ((1, b""),)
    rend1, service_keys = intro.respond()
    assert rend1[:20] == cookie
    client_keys = complete_rendezvous(state, rend1[20:])
    assert client_keys == service_keys


def test_introduce2_garbage_and_wrong_keys_are_refused() -> None:
    ident = ServiceIdentity.generate()
    ip = IntroPointKeys.generate(RP_SPECS, bytes(32))
    sub = ident.blinded(1, 1440).subcredential
    _, body = build_introduce1(ip.auth.public, ip.enc_public, sub, bytes(20), bytes(32), RP_SPECS)
    with pytest.raises(IntroductionError, match="MAC"):
        parse_introduce2(body, {ip.auth.public: ip}, [secrets.token_bytes(32)])
    with pytest.raises(IntroductionError, match="auth key"):
        parse_introduce2(body, {}, [sub])
    tampered = bytearray(body)
    tampered[100] ^= 1
    with pytest.raises(IntroductionError):
        parse_introduce2(bytes(tampered), {ip.auth.public: ip}, [sub])
    for n in range(0, len(body), 7):
        with pytest.raises(IntroductionError):
            parse_introduce2(secrets.token_bytes(n), {ip.auth.public: ip}, [sub])


def test_replay_cache() -> None:
    cache = ReplayCache(lifetime=10)
    body = secrets.token_bytes(300)
    assert not cache.seen(body, 0)
    assert cache.seen(body, 5)
    assert not cache.seen(body, 20)  # expired, then remembered again
    assert not cache.seen(secrets.token_bytes(300), 20)


def test_revision_counter_grows_with_time_and_is_per_key() -> None:
    from puretor.hs.service import revision_counter

    blinded = ServiceIdentity.generate().blinded(20000, 1440)
    values = [revision_counter(blinded, t) for t in (0, 1, 2, 100, 5000, 86400)]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert values[0] >= 1
    other = ServiceIdentity.generate().blinded(20000, 1440)
    assert revision_counter(other, 100) != values[3]


def test_descriptor_with_client_authorization() -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from puretor.errors import OnionError

    ident = ServiceIdentity.generate()
    blinded = ident.blinded(20000, 1440)
    ips = [IntroPointKeys.generate(RP_SPECS, secrets.token_bytes(32))]
    alice, bob = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    desc = build_descriptor(
        blinded,
        SigningKey.generate(),
        ips,
        3,
        now=1_700_000_000,
        auth_clients=[alice.public_key().public_bytes_raw()],
    )
    kwargs = {"blinded_key": blinded.public, "subcredential": blinded.subcredential}
    parsed = decode_descriptor(
        desc, now=1_700_000_100, client_auth_key=alice.private_bytes_raw(), **kwargs
    )
    assert parsed.intro_points[0].auth_key == ips[0].auth.public
    with pytest.raises(OnionError) as missing:
        decode_descriptor(desc, now=1_700_000_100, **kwargs)
    assert missing.value.socks_code == 0xF4
    with pytest.raises(OnionError) as wrong:
        decode_descriptor(
            desc, now=1_700_000_100, client_auth_key=bob.private_bytes_raw(), **kwargs
        )
    assert wrong.value.socks_code == 0xF5


def test_authorized_client_file() -> None:
    import base64

    from puretor.errors import ConfigError
    from puretor.hs.clientauth import parse_authorized_client

    key = secrets.token_bytes(32)
    line = "descriptor:x25519:" + base64.b32encode(key).decode().rstrip("=")
    assert parse_authorized_client(line + "\n") == key
    for bad in (
        "",
        "descriptor:x25519:AAAA",
        "descriptor:ed25519:" + line[18:],
        line + "\n" + line,
    ):
        with pytest.raises(ConfigError):
            parse_authorized_client(bad)


def test_descriptor_offers_congestion_control() -> None:
    ident = ServiceIdentity.generate()
    blinded = ident.blinded(20000, 1440)
    ips = [IntroPointKeys.generate(RP_SPECS, secrets.token_bytes(32))]
    desc = build_descriptor(
        blinded, SigningKey.generate(), ips, 1, now=1_700_000_000, flow_control_sendme_inc=31
    )
    parsed = decode_descriptor(
        desc,
        blinded_key=blinded.public,
        subcredential=blinded.subcredential,
        now=1_700_000_100,
        cc_sendme_inc=31,
    )
    assert parsed.supports_congestion_control and parsed.flow_control is not None
    assert parsed.flow_control.sendme_inc == 31


# A C tor 0.4.9 onion service of a throwaway test network (TestingTorNetwork, 8-minute
# time periods): its expanded identity key and what its [rend]info log said:
#   Setting rev counter for TP #3743123: SRV started at 1796699052, now 1796699715 (current)
#   Encrypted revision counter 664 to 21652161
#   Setting rev counter for TP #3743124: SRV started at 1796699532, now 1796699715 (next)
#   Encrypted revision counter 184 to 5589656
CTOR_SERVICE_KEY = bytes.fromhex(
    "982559108497bb60438bcf9232513b105078cc5da4ed82dd73b8e3da2705bd5e"
    "84513bb01f51600aecc0ba2e077f5b5b948d062fc997a516ddc91f5a83fd5731"
)


@pytest.mark.parametrize(
    ("period", "seconds", "expected"),
    [(3743123, 1796699715 - 1796699052, 21652161), (3743124, 1796699715 - 1796699532, 5589656)],
)
def test_revision_counter_matches_c_tor(period: int, seconds: int, expected: int) -> None:
    """Same blinded secret key (a', and prefix' = SHA-512(str | prefix)) and same OPE as
    C tor: a directory moved between the two keeps its descriptors accepted."""
    from puretor.hs.service import revision_counter

    blinded = ServiceIdentity.from_expanded(CTOR_SERVICE_KEY).blinded(period, 8)
    assert revision_counter(blinded, seconds) == expected
