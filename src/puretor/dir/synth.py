"""Synthetic, properly signed directory documents at live-network size (tests, benchmarks).

`synth_network(n_relays, seed)` writes a microdesc consensus, its
microdescriptors and the authority key certificates, all signed with freshly
generated RSA keys exactly as C tor signs them (PKCS#1 v1.5 type-1 padding
around the raw digest, no DigestInfo).  Relay contents are a deterministic
function of ``seed``; the keys (and hence signatures) are not.

`synth_netdir(n_relays, seed)` builds the same relays straight into a `NetDir`
without text or crypto, cheaply enough for statistical path-selection tests;
``build_netdir(parse(synth_network(n, seed)...))`` gives the same relays.

The distributions are rough imitations of the 2025 live network: ~8000
relays; Fast 90 %, Stable 75 %, Guard ~35 %, Exit ~20 % (0.5 % of them BadExit),
HSDir, V2Dir, a few MiddleOnly/StaleDesc; log-normal bandwidths; a third of the
relays in families of 2-40; IPv6 on a third; a handful of exit-policy summaries.
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from puretor.dir.authorities import Authority
from puretor.dir.consensus import parse_protocols
from puretor.dir.netdir import REJECT_ALL, NetDir, PortPolicy, Relay
from puretor.dir.netdoc import b64encode_unpadded, tokenize

__all__ = [
    "SynthAuthority",
    "SynthNetwork",
    "make_authority",
    "sign_document",
    "synth_netdir",
    "synth_network",
    "tor_rsa_sign",
]

DEFAULT_VALID_AFTER = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)

LIVE_WEIGHTS = {  # bandwidth-weights of a live consensus (2026-07-27)
    "Wbd": 817, "Wbe": 0, "Wbg": 4040, "Wbm": 10000, "Wdb": 10000, "Web": 10000,
    "Wed": 8366, "Wee": 10000, "Weg": 8366, "Wem": 10000, "Wgb": 10000, "Wgd": 817,
    "Wgg": 5960, "Wgm": 5960, "Wmb": 10000, "Wmd": 817, "Wme": 0, "Wmg": 4040, "Wmm": 10000,
}  # fmt: skip
LIVE_PARAMS = {
    "CircuitPriorityHalflifeMsec": 30000, "DoSCircuitCreationEnabled": 1,
    "DoSConnectionEnabled": 1, "ExtendByEd25519ID": 1, "UseOptimisticData": 1,
    "bwweightscale": 10000, "cbttestfreq": 10, "cc_alg": 2, "cc_cwnd_min": 124,
    "guard-n-primary-guards-to-use": 2, "hsdir_spread_store": 4, "min_paths_for_circs_pct": 60,
    "sendme_accept_min_version": 1,
}  # fmt: skip
PROTOCOL_LINES = (
    "Conflux=1 Cons=1-2 Desc=1-4 DirCache=2 FlowCtrl=1-2 HSDir=2 HSIntro=4-5 HSRend=1-2 "
    "Link=3-5 LinkAuth=3 Microdesc=1-3 Padding=2 Relay=2-6",
    "Conflux=1 Cons=1-2 Desc=1-2 DirCache=2 FlowCtrl=1-2 HSDir=2 HSIntro=4-5 HSRend=1-2 "
    "Link=1-5 LinkAuth=1,3 Microdesc=1-2 Padding=2 Relay=1-4",
    "Cons=1-2 Desc=1-2 DirCache=2 FlowCtrl=1-2 HSDir=2 HSIntro=4-5 HSRend=1-2 "
    "Link=1-5 LinkAuth=1,3 Microdesc=1-2 Padding=2 Relay=1-4",
)
VERSIONS = ("Tor 0.4.8.21", "Tor 0.4.8.20", "Tor 0.4.9.3-alpha", "Tor 0.4.8.17", "Tor 0.4.9.4")
EXIT_POLICIES = (
    "reject 25,119,135-139,445,563,1214,4661-4666,6346-6429,6699,6881-6999",
    "accept 20-23,43,53,79-81,88,110,143,194,220,389,443,464,531,543-544,554,563,636,706,"
    "749,873,902-904,981,989-995,1194,1220,1293,1500,1533,1677,1723,1755,1863,2082-2083,"
    "2086-2087,2095-2096,2102-2104,3128,3389,3690,4321,4643,5050,5190,5222-5223,5228,5900,"
    "6660-6669,6679,6697,8000,8008,8074,8080,8082,8087-8088,8232-8233,8332-8333,8443,8888,"
    "9418,9999-10000,11371,19294,19638,50002,64738",
    "accept 80,443",
    "accept 1-65535",
    "reject 1-24,26-79,81-442,444-65535",
)
_SYLLABLES = ("tor", "relay", "node", "exit", "onion", "nix", "bit", "freedom", "priv", "mule")


@dataclass(frozen=True, slots=True)
class _RelaySpec:
    """Everything about one synthetic relay, from which both text and Relay are made."""

    nickname: str
    rsa_id: bytes
    address: str
    or_port: int
    dir_port: int
    ipv6: tuple[str, int] | None
    flags: tuple[str, ...]  # sorted, as written on the `s` line
    version: str
    protocols: str
    bandwidth: int
    unmeasured: bool
    ntor_key: bytes
    ed_id: bytes
    family: tuple[str, ...]  # canonical entries, sorted
    family_ids: tuple[str, ...]
    policy: str | None  # `p` summary, None for reject-all
    policy6: str | None


def _ipv4(rng: random.Random) -> str:
    while True:
        a = rng.randint(1, 223)
        if a not in (10, 127, 100, 169, 172, 192):
            return f"{a}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def _make_specs(n_relays: int, seed: int) -> list[_RelaySpec]:
    rng = random.Random(seed)
    ids = sorted({rng.randbytes(20) for _ in range(n_relays)})
    while len(ids) < n_relays:  # (collisions are astronomically unlikely)
        ids = sorted(set(ids) | {rng.randbytes(20)})
    # Families: about a third of the relays, in groups of 2..40 (Pareto-ish sizes).
    family_of: dict[int, int] = {}
    families: list[list[int]] = []
    order = list(range(n_relays))
    rng.shuffle(order)
    pos = 0
    while pos < n_relays // 3:
        size = min(40, 2 + int(rng.paretovariate(1.3)))
        members = order[pos : pos + size]
        pos += size
        if len(members) >= 2:
            for m in members:
                family_of[m] = len(families)
            families.append(members)
    family_lines = []
    for fam_index, members in enumerate(families):
        entries = sorted("$" + ids[m].hex().upper() for m in members)
        ids_line: tuple[str, ...] = ()
        if fam_index % 5 == 0:
            ids_line = ("ed25519:" + b64encode_unpadded(rng.randbytes(32)),)
        family_lines.append((tuple(entries), ids_line))
    family_prefix: dict[int, str] = {}  # families often share an operator's /16

    specs: list[_RelaySpec] = []
    for i, rsa_id in enumerate(ids):
        fam = family_of.get(i)
        if fam is not None and fam in family_prefix and rng.random() < 0.5:
            address = f"{family_prefix[fam]}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        else:
            address = _ipv4(rng)
            if fam is not None:
                family_prefix.setdefault(fam, ".".join(address.split(".")[:2]))
        fast = rng.random() < 0.9
        stable = rng.random() < 0.75
        bandwidth = max(1, min(2_000_000, int(rng.lognormvariate(8.3, 1.7))))
        unmeasured = rng.random() < 0.03
        if unmeasured:
            bandwidth = min(bandwidth, 20)
        flags = {"Running", "Valid"}
        if fast:
            flags.add("Fast")
        if stable:
            flags.add("Stable")
        if rng.random() < 0.85:
            flags.add("V2Dir")
        if stable and rng.random() < 0.8:
            flags.add("HSDir")
        if fast and stable and bandwidth > 2000 and rng.random() < 0.7:
            flags.add("Guard")
        exit_ = rng.random() < 0.2
        if exit_:
            flags.add("Exit")
            if rng.random() < 0.005:
                flags.add("BadExit")
        elif rng.random() < 0.003:
            flags.add("MiddleOnly")
        if rng.random() < 0.01:
            flags.add("StaleDesc")
        has_v6 = rng.random() < 0.35
        ipv6 = (f"2001:db8:{rng.randint(0, 0xFFFF):x}::{rng.randint(1, 0xFFFF):x}", 0)
        or_port = rng.choice((443, 9001, 9001, 9001, 8443, 9000, 80, rng.randint(1025, 65535)))
        family, family_ids = family_lines[fam] if fam is not None else ((), ())
        policy = policy6 = None
        if exit_:
            policy = rng.choice(EXIT_POLICIES)
            if has_v6 and rng.random() < 0.5:
                policy6 = rng.choice(EXIT_POLICIES[2:])
        nickname = (rng.choice(_SYLLABLES) + rng.choice(_SYLLABLES).capitalize())[:15]
        specs.append(
            _RelaySpec(
                nickname=nickname + str(rng.randint(0, 999)) if rng.random() < 0.5 else nickname,
                rsa_id=rsa_id,
                address=address,
                or_port=or_port,
                dir_port=rng.choice((0, 0, 0, 0, 80, 9030)),
                ipv6=(ipv6[0], or_port) if has_v6 else None,
                flags=tuple(sorted(flags)),
                version=rng.choice(VERSIONS),
                protocols=rng.choice(PROTOCOL_LINES),
                bandwidth=bandwidth,
                unmeasured=unmeasured,
                ntor_key=rng.randbytes(32),
                ed_id=rng.randbytes(32),
                family=family,
                family_ids=family_ids,
                policy=policy,
                policy6=policy6,
            )
        )
    return specs


# ---------------------------------------------------------------------------
# Microdescriptors


def _microdesc_text(spec: _RelaySpec, rng: random.Random, onion_key: bool) -> bytes:
    lines = ["onion-key"]
    if onion_key:  # an RSA-key-sized object; nobody decodes it any more
        lines += ["-----BEGIN RSA PUBLIC KEY-----", *_wrap(rng.randbytes(140))]
        lines.append("-----END RSA PUBLIC KEY-----")
    lines.append("ntor-onion-key " + b64encode_unpadded(spec.ntor_key))
    if spec.family:
        lines.append("family " + " ".join(spec.family))
    if spec.family_ids:
        lines.append("family-ids " + " ".join(spec.family_ids))
    if spec.policy:
        lines.append("p " + spec.policy)
    if spec.policy6:
        lines.append("p6 " + spec.policy6)
    lines.append("id ed25519 " + b64encode_unpadded(spec.ed_id))
    return ("\n".join(lines) + "\n").encode()


def _wrap(raw: bytes) -> list[str]:
    text = base64.b64encode(raw).decode()
    return [text[i : i + 64] for i in range(0, len(text), 64)]


# ---------------------------------------------------------------------------
# Keys, signatures, certificates


def tor_rsa_sign(key: rsa.RSAPrivateKey, digest: bytes) -> bytes:
    """C tor's signature: PKCS#1 v1.5 type-1 padding around the raw digest (no DigestInfo)."""
    nums = key.private_numbers()
    pub = nums.public_numbers
    k = (pub.n.bit_length() + 7) // 8
    em = b"\x00\x01" + b"\xff" * (k - 3 - len(digest)) + b"\x00" + digest
    m = int.from_bytes(em, "big")
    # CRT exponentiation (test-only code; timing side channels are irrelevant here).
    m1 = pow(m, nums.dmp1, nums.p)
    m2 = pow(m, nums.dmq1, nums.q)
    h = (nums.iqmp * (m1 - m2)) % nums.p
    return (m2 + h * nums.q).to_bytes(k, "big")


@cache
def _cached_key(index: int, purpose: str, bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.PKCS1).decode()


def _der_digest(key: rsa.RSAPrivateKey) -> bytes:
    return hashlib.sha1(key.public_key().public_bytes(Encoding.DER, PublicFormat.PKCS1)).digest()


def _sig_object(sig: bytes, label: str = "SIGNATURE") -> str:
    return f"-----BEGIN {label}-----\n" + "\n".join(_wrap(sig)) + f"\n-----END {label}-----\n"


@dataclass(frozen=True)
class SynthAuthority:
    nickname: str
    identity_key: rsa.RSAPrivateKey = field(repr=False)
    signing_key: rsa.RSAPrivateKey = field(repr=False)
    authority: Authority  # as a client would configure it
    cert: bytes  # signed key certificate

    @property
    def v3ident(self) -> bytes:
        return _der_digest(self.identity_key)

    @property
    def signing_key_digest(self) -> bytes:
        return _der_digest(self.signing_key)


def make_authority(
    index: int,
    *,
    published: datetime = DEFAULT_VALID_AFTER - timedelta(days=30),
    lifetime: timedelta = timedelta(days=365),
    bits: int = 1024,
    signing_bits: int | None = None,
    signing_key: rsa.RSAPrivateKey | None = None,
    crosscert_label: str = "ID SIGNATURE",
    crosscert_signer: rsa.RSAPrivateKey | None = None,
) -> SynthAuthority:
    """An authority with cached keys (key ``index``) and a freshly signed certificate.

    ``crosscert_label``/``crosscert_signer`` exist to test the cross-certificate rules.
    """
    identity = _cached_key(index, "identity", bits)
    signing = signing_key or _cached_key(index, "signing", signing_bits or bits)
    v3ident = _der_digest(identity)
    fmt = "%Y-%m-%d %H:%M:%S"
    body = (
        "dir-key-certificate-version 3\n"
        f"dir-address 127.0.0.{index + 1}:{7000 + index}\n"
        f"fingerprint {v3ident.hex().upper()}\n"
        f"dir-key-published {published.strftime(fmt)}\n"
        f"dir-key-expires {(published + lifetime).strftime(fmt)}\n"
        f"dir-identity-key\n{_pem(identity)}"
        f"dir-signing-key\n{_pem(signing)}"
        "dir-key-crosscert\n"
        + _sig_object(tor_rsa_sign(crosscert_signer or signing, v3ident), crosscert_label)
        + "dir-key-certification\n"
    )
    cert = body + _sig_object(tor_rsa_sign(identity, hashlib.sha1(body.encode()).digest()))
    auth = Authority(
        nickname=f"synth{index}",
        address=f"127.0.0.{index + 1}",
        or_port=5000 + index,
        dir_port=7000 + index,
        v3ident=v3ident,
        rsa_id=hashlib.sha1(b"synth relay identity %d" % index).digest(),
    )
    return SynthAuthority(auth.nickname, identity, signing, auth, cert.encode())


def sign_document(
    signed_part: bytes, signers: Sequence[SynthAuthority], algorithm: str = "sha256"
) -> bytes:
    """Append ``directory-signature`` items to ``signed_part`` (which must end with
    ``"directory-signature "``, the end of the signed range)."""
    assert signed_part.endswith(b"directory-signature ")
    h = hashlib.sha256 if algorithm == "sha256" else hashlib.sha1
    digest = h(signed_part).digest()
    out = [signed_part.decode("latin-1")]
    for idx, auth in enumerate(signers):
        prefix = "" if idx == 0 else "directory-signature "
        alg = "" if algorithm == "sha1" else f"{algorithm} "
        out.append(
            f"{prefix}{alg}{auth.v3ident.hex().upper()} {auth.signing_key_digest.hex().upper()}\n"
            + _sig_object(tor_rsa_sign(auth.signing_key, digest))
        )
    return "".join(out).encode("latin-1")


# ---------------------------------------------------------------------------
# The consensus


@dataclass(frozen=True)
class SynthNetwork:
    authorities: tuple[SynthAuthority, ...]
    consensus: bytes = field(repr=False)
    microdescs: bytes = field(repr=False)  # all of them, concatenated
    md_digests: tuple[bytes, ...] = field(repr=False)  # in consensus order
    certs: bytes = field(repr=False)  # all certificates, concatenated
    valid_after: datetime

    @property
    def authority_list(self) -> list[Authority]:
        return [a.authority for a in self.authorities]

    @property
    def now(self) -> float:
        """A time at which the consensus is live."""
        return self.valid_after.timestamp() + 600


def _fmt(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S")


def synth_network(
    n_relays: int = 8000,
    seed: int = 0,
    *,
    n_authorities: int = 9,
    signers: Sequence[int] | None = None,
    valid_after: datetime = DEFAULT_VALID_AFTER,
    interval: timedelta = timedelta(hours=1),
    onion_keys: bool = True,
    algorithm: str = "sha256",
    real_key_sizes: bool = False,
) -> SynthNetwork:
    """A signed consensus + microdescriptors + certificates.

    ``signers`` are the indexes of the authorities that sign (default: all).
    The consensus is fresh for ``interval`` and valid for ``3 * interval``.
    Keys are 1024-bit (fast to generate) unless ``real_key_sizes``: then
    3072-bit identity and 2048-bit signing keys, as the live authorities use.
    """
    specs = _make_specs(n_relays, seed)
    bits, signing_bits = (3072, 2048) if real_key_sizes else (1024, 1024)
    auths = tuple(
        make_authority(i, bits=bits, signing_bits=signing_bits) for i in range(n_authorities)
    )
    rng = random.Random(seed ^ 0x5EED)
    md_texts = [_microdesc_text(s, rng, onion_keys) for s in specs]
    md_digests = tuple(hashlib.sha256(t).digest() for t in md_texts)

    fu, vu = valid_after + interval, valid_after + 3 * interval
    protos = "Cons=2 Desc=2 DirCache=2 FlowCtrl=1-2 HSDir=2 HSIntro=4 HSRend=2 Link=4-5 "
    lines = [
        "network-status-version 3 microdesc",
        "vote-status consensus",
        "consensus-method 35",
        f"valid-after {_fmt(valid_after)}",
        f"fresh-until {_fmt(fu)}",
        f"valid-until {_fmt(vu)}",
        "voting-delay 300 300",
        "client-versions 0.4.8.20,0.4.8.21,0.4.9.4",
        "server-versions 0.4.8.20,0.4.8.21,0.4.9.4",
        "known-flags Authority BadExit Exit Fast Guard HSDir MiddleOnly NoEdConsensus "
        "Running Stable StaleDesc Sybil V2Dir Valid",
        f"recommended-client-protocols {protos}Microdesc=2 Relay=2-4",
        f"recommended-relay-protocols {protos}LinkAuth=3 Microdesc=2 Relay=2-4",
        "required-client-protocols Cons=2 Desc=2 FlowCtrl=1 Link=4 Microdesc=2 Relay=2",
        f"required-relay-protocols {protos}LinkAuth=3 Microdesc=2 Relay=2-4",
        "params " + " ".join(f"{k}={v}" for k, v in sorted(LIVE_PARAMS.items())),
        "shared-rand-previous-value 9 " + base64.b64encode(rng.randbytes(32)).decode(),
        "shared-rand-current-value 9 " + base64.b64encode(rng.randbytes(32)).decode(),
    ]
    for a in auths:
        lines += [
            f"dir-source {a.nickname} {a.v3ident.hex().upper()} {a.authority.address} "
            f"{a.authority.address} {a.authority.dir_port} {a.authority.or_port}",
            f"contact synth{a.authority.dir_port}@example.invalid",
            f"vote-digest {rng.randbytes(20).hex().upper()}",
        ]
    for spec, digest in zip(specs, md_digests, strict=True):
        lines.append(
            f"r {spec.nickname} {b64encode_unpadded(spec.rsa_id)} 2038-01-01 00:00:00 "
            f"{spec.address} {spec.or_port} {spec.dir_port}"
        )
        if spec.ipv6:
            lines.append(f"a [{spec.ipv6[0]}]:{spec.ipv6[1]}")
        lines.append("m " + b64encode_unpadded(digest))
        lines.append("s " + " ".join(spec.flags))
        lines.append("v " + spec.version)
        lines.append("pr " + spec.protocols)
        unmeasured = " Unmeasured=1" if spec.unmeasured else ""
        lines.append(f"w Bandwidth={spec.bandwidth}{unmeasured}")
    lines.append("directory-footer")
    lines.append(
        "bandwidth-weights " + " ".join(f"{k}={v}" for k, v in sorted(LIVE_WEIGHTS.items()))
    )
    signed = ("\n".join(lines) + "\ndirectory-signature ").encode()
    chosen = [auths[i] for i in (signers if signers is not None else range(n_authorities))]
    consensus = sign_document(signed, chosen, algorithm)
    return SynthNetwork(
        authorities=auths,
        consensus=consensus,
        microdescs=b"".join(md_texts),
        md_digests=md_digests,
        certs=b"".join(a.cert for a in auths),
        valid_after=valid_after,
    )


# ---------------------------------------------------------------------------
# Straight to a NetDir


_policies: dict[str | None, PortPolicy] = {None: REJECT_ALL}
_protocol_maps: dict[str, dict[str, frozenset[int]]] = {}
_flag_sets: dict[tuple[str, ...], frozenset[str]] = {}


def _policy(text: str | None) -> PortPolicy:
    policy = _policies.get(text)
    if policy is None and text is not None:
        accept, ports = text.split(" ", 1)
        ranges = []
        for part in ports.split(","):
            lo, _, hi = part.partition("-")
            ranges.append((int(lo), int(hi or lo)))
        policy = _policies[text] = PortPolicy(accept == "accept", tuple(ranges))
    assert policy is not None
    return policy


def _protocols(line: str) -> dict[str, frozenset[int]]:
    protocols = _protocol_maps.get(line)
    if protocols is None:
        item = tokenize("pr " + line + "\n", what="synthetic pr")[0]
        protocols = _protocol_maps[line] = parse_protocols(item, item.args)
    return protocols


def _interned(cache: dict[tuple[str, ...], frozenset[str]], key: tuple[str, ...]) -> frozenset[str]:
    value = cache.get(key)
    if value is None:
        value = cache[key] = frozenset(key)
    return value


@lru_cache(maxsize=8)
def synth_netdir(
    n_relays: int = 8000, seed: int = 0, valid_after: datetime = DEFAULT_VALID_AFTER
) -> NetDir:
    """The relays of ``synth_network(n_relays, seed)`` as a NetDir, every microdesc known.

    Cached: the same arguments return the same (immutable) object.
    """
    relays = []
    families: dict[tuple[str, ...], frozenset[str]] = {}
    rng = random.Random(seed ^ 0x5EED)  # same stream as synth_network's microdescs
    for spec in _make_specs(n_relays, seed):
        md_digest = hashlib.sha256(_microdesc_text(spec, rng, True)).digest()
        relays.append(
            Relay(
                spec.nickname,
                spec.rsa_id,
                spec.address,
                spec.or_port,
                spec.dir_port,
                _interned(_flag_sets, spec.flags),
                spec.bandwidth,
                spec.unmeasured,
                spec.version,
                _protocols(spec.protocols),
                spec.ipv6,
                md_digest,
                spec.ntor_key,
                spec.ed_id,
                _interned(families, spec.family),
                frozenset(spec.family_ids),
                _policy(spec.policy),
                _policy(spec.policy6),
            )
        )
    interval = 3600
    return NetDir(
        valid_after=valid_after,
        fresh_until=valid_after + timedelta(seconds=interval),
        valid_until=valid_after + timedelta(seconds=3 * interval),
        voting_interval=interval,
        params=dict(LIVE_PARAMS),
        bandwidth_weights=dict(LIVE_WEIGHTS),
        relays=tuple(relays),
    )
