"""A tiny git repository (dumb HTTP) and Python package index for the targets, so that the
docs' ``git -c http.proxy=…`` and ``pip --proxy …`` recipes fetch something real through
HTTPTunnelPort.  Built in memory at start-up, deterministically, without git or pip.

    GET /git/demo.git/info/refs, /HEAD, /objects/xx/yyyy…   one commit with a README
    GET /simple/, /simple/puretor-demo/, /packages/<wheel>   a PEP 503 index, one wheel
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
import zlib

README = b"puretor demo repository: fetched through Tor.\n"
WHEEL_NAME = "puretor_demo-1.0-py3-none-any.whl"


def _git_object(kind: str, body: bytes) -> tuple[str, bytes]:
    raw = f"{kind} {len(body)}\0".encode() + body
    return hashlib.sha1(raw).hexdigest(), zlib.compress(raw)


def git_files(prefix: str = "/git/demo.git") -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    blob, data = _git_object("blob", README)
    files[f"{prefix}/objects/{blob[:2]}/{blob[2:]}"] = data
    tree, data = _git_object("tree", b"100644 README\0" + bytes.fromhex(blob))
    files[f"{prefix}/objects/{tree[:2]}/{tree[2:]}"] = data
    who = "puretor testnet <testnet@target.test> 1700000000 +0000"
    commit_body = f"tree {tree}\nauthor {who}\ncommitter {who}\n\nA README\n".encode()
    commit, data = _git_object("commit", commit_body)
    files[f"{prefix}/objects/{commit[:2]}/{commit[2:]}"] = data
    files[f"{prefix}/info/refs"] = f"{commit}\trefs/heads/main\n".encode()
    files[f"{prefix}/HEAD"] = b"ref: refs/heads/main\n"
    files[f"{prefix}/objects/info/packs"] = b"\n"
    return files


def _wheel() -> bytes:
    entries = {
        "puretor_demo.py": b'"""A demo package served by the private network."""\nVERSION = "1.0"\n',
        "puretor_demo-1.0.dist-info/METADATA": (
            b"Metadata-Version: 2.1\nName: puretor-demo\nVersion: 1.0\n"
            b"Summary: served by the puretor private network\n"
        ),
        "puretor_demo-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: puretor-testnet\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = []
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in entries.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            zf.writestr(info, body)
            digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=")
            record.append(f"{name},sha256={digest.decode()},{len(body)}")
        record.append("puretor_demo-1.0.dist-info/RECORD,,")
        info = zipfile.ZipInfo("puretor_demo-1.0.dist-info/RECORD", date_time=(2024, 1, 1, 0, 0, 0))
        zf.writestr(info, "\n".join(record) + "\n")
    return buf.getvalue()


def index_files() -> dict[str, bytes]:
    wheel = _wheel()
    sha = hashlib.sha256(wheel).hexdigest()
    page = (
        "<!DOCTYPE html>\n<html><body>\n"
        f'<a href="/packages/{WHEEL_NAME}#sha256={sha}">{WHEEL_NAME}</a>\n'
        "</body></html>\n"
    ).encode()
    root = b'<!DOCTYPE html>\n<html><body>\n<a href="/simple/puretor-demo/">puretor-demo</a>\n</body></html>\n'
    return {
        "/simple/": root,
        "/simple/puretor-demo/": page,
        f"/packages/{WHEEL_NAME}": wheel,
    }


def demo_files() -> dict[str, bytes]:
    return {**git_files(), **index_files()}
