"""Downloader end-to-end against a local HTTP server (127.0.0.1) serving generated archives."""
import hashlib
import http.server
import io
import json
import os
import tarfile
import threading
import zipfile

import pytest
from PIL import Image

import promptot.datasets.download as dl
from promptot.datasets.__main__ import main
from promptot.datasets.download import ChecksumError, DownloadError, Resource, Source


def jpeg_bytes(color):
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="JPEG")
    return buf.getvalue()


def make_tar(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_zip(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


class Server:
    """Serves ``files`` (name -> bytes) with HTTP Range support; records request headers."""

    def __init__(self, files):
        self.files, self.requests = files, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                outer.requests.append((name, self.headers.get("Range")))
                if name not in outer.files:
                    self.send_error(404)
                    return
                data = outer.files[name]
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                    data = data[start:]
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fixture_server():
    files = {}
    for c in ["banded", "blotchy"]:
        for i in range(3):
            files[f"dtd/images/{c}/{c}_{i}.jpg"] = jpeg_bytes((i * 40, 0, 0))
    files["dtd/labels/readme.txt"] = b"unused"
    tar = make_tar(files)
    split = {s: [[f"{c}/{c}_{i}.jpg", y, c] for y, c in enumerate(["banded", "blotchy"]) for i in idx]
             for s, idx in [("train", [0]), ("val", [1]), ("test", [2])]}
    split_bytes = json.dumps(split).encode()
    inner = make_tar({"101_ObjectCategories/Faces/image_0001.jpg": jpeg_bytes((1, 1, 1))})
    outer_zip = make_zip({"caltech-101/101_ObjectCategories.tar.gz": inner, "caltech-101/Annotations.tar": b"x"})
    srv = Server({"dtd.tar.gz": tar, "split.json": split_bytes, "caltech-101.zip": outer_zip,
                  "evil.zip": make_zip({"../escape.txt": b"x"})})
    srv.tar, srv.split = tar, split_bytes
    yield srv
    srv.close()


def dtd_sources(srv, sha=None, md5=None):
    return {"DescribableTextures": Source([
        Resource(srv.url + "/dtd.tar.gz", "dtd.tar.gz", sha256=sha, md5=md5, moves=[("dtd/images", "dtd/images")]),
        Resource(srv.url + "/split.json", "split.json", sha256=hashlib.sha256(srv.split).hexdigest(),
                 dest="dtd/split_zhou_DescribableTextures.json"),
    ])}


def test_download_verify_extract_and_load(tmp_path, fixture_server):
    srv = fixture_server
    lines = []
    sources = dtd_sources(srv, md5=hashlib.md5(srv.tar).hexdigest())
    rc = dl.download("DescribableTextures", str(tmp_path), sources=sources, out=lines.append)
    assert rc == 0
    assert os.path.isfile(tmp_path / "dtd" / "images" / "banded" / "banded_0.jpg")
    assert not os.path.exists(tmp_path / "dtd" / "labels")  # only the listed members are installed
    assert (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").read_bytes() == srv.split
    assert any("checksum OK" in line for line in lines)
    from types import SimpleNamespace

    from promptot.datasets import DescribableTextures

    cfg = SimpleNamespace(DATASET=SimpleNamespace(ROOT=str(tmp_path), NUM_SHOTS=-1, SUBSAMPLE_CLASSES="all"), SEED=1)
    ds = DescribableTextures(cfg)
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (2, 2, 2)
    # A rerun finds everything in place and fetches nothing.
    n = len(srv.requests)
    assert dl.download("DescribableTextures", str(tmp_path), sources=sources, out=lines.append) == 0
    assert len(srv.requests) == n


def test_resume_after_truncated_part(tmp_path, fixture_server):
    srv = fixture_server
    cache = tmp_path / dl.DOWNLOAD_DIR
    os.makedirs(cache)
    (cache / "dtd.tar.gz.part").write_bytes(srv.tar[:100])
    sha = hashlib.sha256(srv.tar).hexdigest()
    assert dl.download("DescribableTextures", str(tmp_path), sources=dtd_sources(srv, sha=sha), out=print) == 0
    assert ("dtd.tar.gz", "bytes=100-") in srv.requests
    assert (cache / "dtd.tar.gz").read_bytes() == srv.tar
    assert not (cache / "dtd.tar.gz.part").exists()


def test_checksum_mismatch(tmp_path, fixture_server):
    srv = fixture_server
    with pytest.raises(ChecksumError, match="Checksum mismatch"):
        dl.download("DescribableTextures", str(tmp_path), sources=dtd_sources(srv, sha="0" * 64), out=print)
    assert not os.path.exists(tmp_path / "dtd" / "images")
    assert not os.listdir(tmp_path / dl.DOWNLOAD_DIR)  # bad file removed


def test_nested_archive_and_mirror_cli(tmp_path, fixture_server, monkeypatch, capsys):
    srv = fixture_server
    table = {"Caltech101": Source([Resource("https://unreachable.invalid/caltech-101.zip", "caltech-101.zip",
                                            moves=[("caltech-101/101_ObjectCategories.tar.gz", "caltech-101")])])}
    monkeypatch.setattr(dl, "SOURCES", table)
    rc = main(["download", "Caltech101", "--root", str(tmp_path), "--mirror", srv.url])
    assert rc == 0
    assert os.path.isfile(tmp_path / "caltech-101" / "101_ObjectCategories" / "Faces" / "image_0001.jpg")
    assert "unverified" in capsys.readouterr().out


def test_http_error_and_unsafe_archive(tmp_path, fixture_server):
    srv = fixture_server
    with pytest.raises(DownloadError, match="HTTP 404"):
        dl.fetch(srv.url + "/missing.tar", str(tmp_path / "m.tar"), out=print)
    table = {"X": Source([Resource(srv.url + "/evil.zip", "evil.zip", moves=[("*", "x")])])}
    with pytest.raises(DownloadError, match="outside"):
        dl.download("X", str(tmp_path / "data"), sources=table, out=print)
    assert not (tmp_path / "data" / "escape.txt").exists()


def test_manual_instructions_and_classnames(tmp_path, capsys):
    rc = dl.download("ImageNet", str(tmp_path))
    out = capsys.readouterr().out
    assert rc == 1 and "MANUAL" in out and "image-net.org" in out
    assert (tmp_path / "imagenet" / "classnames.txt").read_text().startswith("n01440764 tench\n")
    for name in dl.SOURCES:
        src = dl.SOURCES[name]
        assert src.resources or src.manual, name
        for res in src.resources:  # a checksum is either absent (unverified) or well-formed
            assert res.sha256 is None or len(res.sha256) == 64
            assert res.md5 is None or len(res.md5) == 32


def test_every_dataset_has_a_recipe_or_manual_steps():
    from promptot.datasets import BUILTIN_CLASSES

    assert set(dl.SOURCES) == set(BUILTIN_CLASSES)
    for name, src in dl.SOURCES.items():
        assert src.resources or src.manual, name
        for res in src.resources:
            if res.filename.startswith("split_zhou_") or res.filename == "cat_to_name.json":
                assert res.checksummed, (name, res.filename)  # pinned copies: always verified


def test_existing_dataset_folder_does_not_skip_extraction(tmp_path, fixture_server):
    srv = fixture_server
    os.makedirs(tmp_path / "caltech-101")  # e.g. the split file was put there first
    table = {"Caltech101": Source([Resource(srv.url + "/caltech-101.zip", "caltech-101.zip",
                                            moves=[("caltech-101/101_ObjectCategories.tar.gz", "caltech-101")])])}
    dl.download("Caltech101", str(tmp_path), sources=table, out=print)
    assert os.path.isfile(tmp_path / "caltech-101" / "101_ObjectCategories" / "Faces" / "image_0001.jpg")
