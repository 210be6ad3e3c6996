"""The on-disk directory cache: permissions, atomic writes, re-verification on load."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest
from dir_testlib import TD2_NOW, data, small_network
from test_dir_state import bootstrap

from puretor.dir.cache import CERTS_FILE, CONSENSUS_FILE, MICRODESCS_FILE, DirCache
from puretor.dir.consensus import parse_consensus
from puretor.errors import DirectoryError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_round_trip_with_permissions(tmp_path: Path) -> None:
    net = small_network()
    state = bootstrap(net, net.now)
    cache_dir = tmp_path / "data" / "nested"
    cache = DirCache(cache_dir, net.authority_list)
    cache.save(state)
    assert mode(cache_dir) == 0o700
    assert sorted(os.listdir(cache_dir)) == sorted([CONSENSUS_FILE, CERTS_FILE, MICRODESCS_FILE])
    for name in os.listdir(cache_dir):
        assert mode(cache_dir / name) == 0o600
    assert (cache_dir / CONSENSUS_FILE).read_bytes() == net.consensus
    assert (cache_dir / MICRODESCS_FILE).read_bytes().startswith(b"@last-listed ")

    loaded = DirCache(cache_dir, net.authority_list, rng=random.Random(1)).load(net.now)
    assert loaded.consensus is not None and loaded.have_enough_dir_info(net.now)
    assert loaded.netdir(net.now).relays == state.netdir(net.now).relays  # type: ignore[union-attr]
    assert loaded.next_requests(net.now) == []


def test_save_writes_only_what_changed(tmp_path: Path) -> None:
    net = small_network()
    state = bootstrap(net, net.now)
    cache = DirCache(tmp_path, net.authority_list)
    cache.save(state)
    before = (tmp_path / CONSENSUS_FILE).stat().st_mtime_ns
    os.utime(tmp_path / CONSENSUS_FILE, ns=(0, 0))
    cache.save(state)
    assert (tmp_path / CONSENSUS_FILE).stat().st_mtime_ns == 0  # unchanged, not rewritten
    cache.save(state, force=True)
    assert (tmp_path / CONSENSUS_FILE).stat().st_mtime_ns >= before


def test_expired_consensus_is_not_used_but_microdescs_are_kept(tmp_path: Path) -> None:
    net = small_network()
    DirCache(tmp_path, net.authority_list).save(bootstrap(net, net.now))
    cache = DirCache(tmp_path, net.authority_list)
    state = cache.load(net.now + 3 * 86400)
    assert state.consensus is None and len(state.microdescs) == 300
    assert any("expired" in p for p in cache.problems)
    assert state.next_requests(net.now + 3 * 86400)[0].kind == "consensus"  # no backoff
    # Within the reasonably-live window it is used, though not live: refetch at once.
    stale = DirCache(tmp_path, net.authority_list).load(net.now + 86400)
    assert stale.consensus is not None and not stale.is_live(net.now + 86400)
    assert stale.next_requests(net.now + 86400)[0].kind == "consensus"


def test_tampered_and_corrupt_files(tmp_path: Path) -> None:
    net = small_network()
    DirCache(tmp_path, net.authority_list).save(bootstrap(net, net.now))
    path = tmp_path / CONSENSUS_FILE
    path.write_bytes(path.read_bytes().replace(b"w Bandwidth=", b"w Bandwidth=1", 1))
    cache = DirCache(tmp_path, net.authority_list)
    state = cache.load(net.now)
    assert state.consensus is None and state.pending is None
    assert any(CONSENSUS_FILE in p and "insufficiently signed" in p for p in cache.problems)

    (tmp_path / CERTS_FILE).write_bytes(b"not a certificate\n")
    (tmp_path / MICRODESCS_FILE).write_bytes(b"@last-listed x\nonion-key\nbroken\n")
    cache = DirCache(tmp_path, net.authority_list)
    state = cache.load(net.now)
    assert state.certs == {} and state.microdescs == {}
    assert any(CERTS_FILE in p for p in cache.problems)
    assert any("skipping a cached microdescriptor" in p for p in cache.problems)
    # Without certificates the cached consensus waits for them (they will be fetched).
    assert state.pending is not None and state.next_requests(net.now)[0].kind == "certs"
    with pytest.raises(DirectoryError, match=CERTS_FILE):
        DirCache(tmp_path, net.authority_list, strict=True).load(net.now)


def test_loads_a_c_tor_data_directory(tmp_path: Path) -> None:
    # The files of a C tor 0.4.9 client, under C tor's names.
    (tmp_path / CONSENSUS_FILE).write_bytes(data("arti-testdata2-cached-microdesc-consensus"))
    (tmp_path / CERTS_FILE).write_bytes(data("arti-testdata2-cached-certs"))
    (tmp_path / (MICRODESCS_FILE + ".new")).write_bytes(
        data("arti-testdata2-cached-microdescs.new")
    )
    consensus = parse_consensus(data("arti-testdata2-cached-microdesc-consensus"))
    from puretor.dir.authorities import Authority

    auths = [
        Authority(s.nickname, s.address, s.or_port, s.dir_port, s.identity, bytes(20))
        for s in consensus.dir_sources
    ]
    cache = DirCache(tmp_path, auths)
    state = cache.load(TD2_NOW)
    assert cache.problems == []
    nd = state.netdir(TD2_NOW)
    assert nd is not None and len(nd.relays) == 7 and all(r.has_md for r in nd.relays)


def test_unusable_directory(tmp_path: Path) -> None:
    net = small_network()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DirectoryError, match="cannot use .* as the DataDirectory"):
        DirCache(blocker / "sub", net.authority_list).load(net.now)
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    DirCache(loose, net.authority_list).load(net.now)
    assert mode(loose) == 0o700  # tightened, as C tor does


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    # C tor's check_private_dir: refused, whoever we are (root included).
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(DirectoryError, match="is not owned by this user .* but by .*65534"):
        DirCache(theirs, small_network().authority_list).ensure_dir(probe=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory(tmp_path: Path) -> None:
    net = small_network()
    state = bootstrap(net, net.now)
    os.chmod(tmp_path, 0o500)
    try:
        with pytest.raises(DirectoryError, match="cannot write"):
            DirCache(tmp_path, net.authority_list).save(state)
    finally:
        os.chmod(tmp_path, 0o700)


def test_failed_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = small_network()
    state = bootstrap(net, net.now)

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(DirectoryError, match="No space left on device"):
        DirCache(tmp_path, net.authority_list).save(state)
    assert os.listdir(tmp_path) == []
