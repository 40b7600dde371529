"""download_cifar10 against a local HTTP server on 127.0.0.1 (no real network)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sharpscope.data import cifar10, download_cifar10, extract_tar_safely
from sharpscope.errors import ConfigError, DataError


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Serve ``tmp_path/www`` over HTTP; yields (base URL, folder)."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", www
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def tar_of(folder: Path, arcname: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return buf.getvalue()


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_download_verify_extract_and_load(tmp_path: Path, server, make_cifar10_folder) -> None:
    url, www = server
    archive = tar_of(make_cifar10_folder(tmp_path / "src"), "cifar-10-batches-py")
    (www / "c.tar.gz").write_bytes(archive)
    dest = tmp_path / "dest"
    folder = download_cifar10(dest, url=f"{url}/c.tar.gz", sha256=sha(archive), timeout=10)
    assert folder == dest / "cifar-10-batches-py"
    assert len(cifar10(folder)) == 10
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-batches-py"]  # no leftovers
    (www / "c.tar.gz").unlink()  # already present: nothing is fetched
    assert download_cifar10(dest, url=f"{url}/c.tar.gz", sha256=sha(archive)) == folder


def test_wrong_checksum_is_refused_and_deleted(tmp_path: Path, server, make_cifar10_folder) -> None:
    url, www = server
    archive = tar_of(make_cifar10_folder(tmp_path / "src"), "cifar-10-batches-py")
    (www / "c.tar.gz").write_bytes(archive)
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        download_cifar10(dest, url=f"{url}/c.tar.gz", sha256="0" * 64)
    assert list(dest.iterdir()) == []


def test_http_error(tmp_path: Path, server) -> None:
    url, _ = server
    with pytest.raises(DataError, match="download of .* failed"):
        download_cifar10(tmp_path / "d", url=f"{url}/missing.tar.gz", sha256="0" * 64)
    assert list((tmp_path / "d").iterdir()) == []


def test_path_traversal_is_refused(tmp_path: Path, server) -> None:
    url, www = server
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        payload = b"owned"
        info = tarfile.TarInfo("cifar-10-batches-py/../../escaped.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    archive = buf.getvalue()
    (www / "evil.tar.gz").write_bytes(archive)
    dest = tmp_path / "a" / "b"
    with pytest.raises(DataError, match="refused member"):
        download_cifar10(dest, url=f"{url}/evil.tar.gz", sha256=sha(archive))
    assert not (tmp_path / "a" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert list(dest.iterdir()) == []


def test_links_and_absolute_paths_are_refused(tmp_path: Path) -> None:
    for name, kind in [("/etc/evil", tarfile.REGTYPE), ("x/link", tarfile.SYMTYPE)]:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd"
            tar.addfile(info, io.BytesIO(b""))
        (tmp_path / "t.tar").write_bytes(buf.getvalue())
        with pytest.raises(DataError, match="refused member"):
            extract_tar_safely(tmp_path / "t.tar", tmp_path / "out")
        assert not (tmp_path / "out" / "x" / "link").exists()


def test_argument_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="http"):
        download_cifar10(tmp_path, url="file:///etc/passwd")
    with pytest.raises(ConfigError, match="64 hex"):
        download_cifar10(tmp_path, url="http://127.0.0.1:1/x", sha256="abc")
