"""Dataset names across check/download/list and the config files; download sources (local HTTP server only)."""
import glob
import hashlib
import json
import os

import pytest

import promptot.datasets.download as dl
from promptot.datasets import BUILTIN_CLASSES, DescribableTextures, EuroSAT
from promptot.datasets.__main__ import main
from promptot.datasets.download import Resource, Source
from promptot.datasets.names import CONFIG_STEMS, UnknownDatasetError, _key, resolve_name
from promptot.errors import UserError

from test_datasets_download import Server, jpeg_bytes, make_tar, make_zip

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "datasets")


def jpeg(color=(1, 2, 3)):
    return jpeg_bytes(color)


tar_gz, zip_bytes = make_tar, make_zip


def split_json(prefix_by_class):
    """A split with one train/val/test image per class: {class: [3 relative paths]}."""
    split = {"train": [], "val": [], "test": []}
    for label, (cname, paths) in enumerate(prefix_by_class.items()):
        for s, p in zip(("train", "val", "test"), paths):
            split[s].append([p, label, cname])
    return json.dumps(split).encode()


def sha(data):
    return hashlib.sha256(data).hexdigest()


def flat(text):
    """CLI errors are wrapped to the terminal width: compare them with single spaces."""
    return " ".join(text.split())


# ----------------------------------------------------------------------------- names
def test_config_files_and_names_agree():
    stems = {}
    for path in sorted(glob.glob(os.path.join(CONFIGS, "*.yaml"))):
        text = open(path).read()
        stems[os.path.basename(path)[:-5]] = text.split('"')[1]
    assert stems == CONFIG_STEMS
    assert set(stems.values()) == set(BUILTIN_CLASSES)
    for stem, name in stems.items():
        folder = BUILTIN_CLASSES[name].dataset_dir
        for alias in {stem, stem.upper(), name, name.lower(), name.upper(), folder} - {""}:
            assert resolve_name(alias) == name, alias
    assert resolve_name("DTD") == "DescribableTextures" and resolve_name("ImageNet-A") == "ImageNetA"


def test_aliases_never_collide():
    owners = {}
    for stem, name in CONFIG_STEMS.items():
        owners.setdefault(_key(stem), set()).add(name)
    for name, cls in BUILTIN_CLASSES.items():
        owners.setdefault(_key(name), set()).add(name)
        if cls.dataset_dir:
            owners.setdefault(_key(cls.dataset_dir), set()).add(name)
    assert {k: v for k, v in owners.items() if len(v) > 1} == {}


def test_unknown_name_is_one_paragraph_with_suggestions(tmp_path, capsys):
    with pytest.raises(UnknownDatasetError) as exc:
        resolve_name("oxford_flower")
    assert isinstance(exc.value, UserError) and "\n" not in str(exc.value)
    assert "Did you mean OxfordFlowers" in str(exc.value)
    rc = main(["download", "EuroSAT", "flowers_102", "--root", str(tmp_path / "data")])
    err = flat(capsys.readouterr().err)
    assert rc == 2 and err.startswith("ERROR: Unknown dataset 'flowers_102'.") and "OxfordFlowers" in err
    assert "eurosat" in err and "fashion_mnist_shift" in err
    assert not os.path.exists(tmp_path / "data")  # nothing was fetched for the valid name either


def test_list_shows_stems_folders_and_download_kind(capsys):
    assert main(["list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    for stem, name in CONFIG_STEMS.items():
        assert f" {stem} " in rows[name]
        assert rows[name].rstrip().endswith(dl.SOURCES[name].kind)
    assert rows["DescribableTextures"].rstrip().endswith(" recipe")
    assert rows["ImageFolder"].rstrip().endswith("manual steps")


# ----------------------------------------------------------------------------- the README's command
@pytest.fixture
def eurosat_dtd_server(monkeypatch):
    euro_zip = zip_bytes({f"2750/{c}/{c}_{i}.jpg": jpeg() for c in ("AnnualCrop", "Forest") for i in range(3)})
    euro_split = split_json({"Annual Crop Land": [f"AnnualCrop/AnnualCrop_{i}.jpg" for i in range(3)],
                             "Forest": [f"Forest/Forest_{i}.jpg" for i in range(3)]})
    dtd_tar = tar_gz({f"dtd/images/{c}/{c}_{i}.jpg": jpeg() for c in ("banded", "blotchy") for i in range(3)})
    dtd_split = split_json({c: [f"{c}/{c}_{i}.jpg" for i in range(3)] for c in ("banded", "blotchy")})
    srv = Server({"EuroSAT.zip": euro_zip, "euro_split.json": euro_split, "dtd.tar.gz": dtd_tar,
                  "dtd_split.json": dtd_split})
    table = dict(dl.SOURCES)
    table["EuroSAT"] = Source([
        Resource(srv.url + "/EuroSAT.zip", "EuroSAT.zip", sha256=sha(euro_zip), moves=[("2750", "eurosat/2750")]),
        Resource(srv.url + "/euro_split.json", "split_zhou_EuroSAT.json", sha256=sha(euro_split),
                 dest="eurosat/split_zhou_EuroSAT.json")])
    table["DescribableTextures"] = Source([
        Resource(srv.url + "/dtd.tar.gz", "dtd.tar.gz", md5=hashlib.md5(dtd_tar).hexdigest(),
                 moves=[("dtd/images", "dtd/images")]),
        Resource(srv.url + "/dtd_split.json", "split_zhou_DescribableTextures.json", sha256=sha(dtd_split),
                 dest="dtd/split_zhou_DescribableTextures.json")])
    monkeypatch.setattr(dl, "SOURCES", table)
    small = {"train": 2, "val": 2, "test": 2, "classes": 2}
    monkeypatch.setattr(EuroSAT, "expected_counts", small)
    monkeypatch.setattr(DescribableTextures, "expected_counts", small)
    yield srv
    srv.close()


def test_readme_download_command_then_check(tmp_path, capsys, eurosat_dtd_server):
    root = str(tmp_path)
    assert main(["download", "EuroSAT", "DTD", "--root", root]) == 0
    out = capsys.readouterr().out
    assert "Summary: EuroSAT: done; DescribableTextures: done" in out
    assert os.path.isfile(tmp_path / "eurosat" / "2750" / "Forest" / "Forest_0.jpg")
    assert os.path.isfile(tmp_path / "dtd" / "split_zhou_DescribableTextures.json")
    rc = main(["check", "--root", root, "eurosat", "dtd"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "[OK] EuroSAT" in out and "[OK] DescribableTextures" in out


def test_datasets_without_files_print_manual_steps_and_others_proceed(tmp_path, capsys, eurosat_dtd_server):
    rc = main(["download", "image_folder", "eurosat", "fashion_mnist_shift", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1  # manual steps remain
    assert os.path.isfile(tmp_path / "eurosat" / "split_zhou_EuroSAT.json")
    assert "MANUAL: ImageFolder is your own data" in out and "dataset-fashion-mnist" in out
    assert "Summary: ImageFolder: manual steps left" in out and "EuroSAT: done" in out


# ----------------------------------------------------------------------------- --source
def sun_payload():
    tar = tar_gz({"SUN397/a/abbey/sun_1.jpg": jpeg(), "SUN397/a/abbey/sun_2.jpg": jpeg(),
                  "SUN397/b/bar/sun_3.jpg": jpeg(), "SUN397/b/bar/sun_4.jpg": jpeg()})
    split = json.dumps({"train": [["a/abbey/sun_1.jpg", 0, "abbey"], ["b/bar/sun_3.jpg", 1, "bar"]],
                        "val": [["a/abbey/sun_2.jpg", 0, "abbey"]], "test": [["b/bar/sun_4.jpg", 1, "bar"]]}).encode()
    return tar, split


def write_source(path, datasets):
    path.write_text(json.dumps({"datasets": datasets}))
    return str(path)


def test_source_file_with_checksums(tmp_path, capsys):
    tar, split = sun_payload()
    srv = Server({"SUN397.tar.gz": tar, "split.json": split})
    try:
        src = write_source(tmp_path / "lab.json", {"sun397": {"resources": [
            {"url": srv.url + "/SUN397.tar.gz", "filename": "SUN397.tar.gz", "sha256": sha(tar),
             "moves": [["SUN397", "sun397/SUN397"]]},
            {"url": srv.url + "/split.json", "filename": "split_zhou_SUN397.json",
             "git_sha1": hashlib.sha1(b"blob %d\0" % len(split) + split).hexdigest(),
             "dest": "sun397/split_zhou_SUN397.json"}]}})
        data = tmp_path / "data"
        assert main(["download", "SUN397", "--root", str(data), "--source", src]) == 0
        assert (data / "sun397" / "split_zhou_SUN397.json").read_bytes() == split
        assert main(["check", "--root", str(data), "--no-verify", "sun397"]) == 0
        # A dataset the file does not cover is an error for that dataset only.
        assert main(["download", "sun397", "eurosat", "--root", str(data), "--source", src]) == 1
        captured = capsys.readouterr()
        assert "ERROR: EuroSAT: the source file" in flat(captured.err) and "SUN397: done" in captured.out
        # A file that does not match its checksum is refused.
        bad = write_source(tmp_path / "bad.json", {"SUN397": {"resources": [
            {"url": srv.url + "/split.json", "filename": "s.json", "sha256": "0" * 64, "dest": "sun397/s.json"}]}})
        assert main(["download", "SUN397", "--root", str(data), "--source", bad]) == 1
        assert "Checksum mismatch" in flat(capsys.readouterr().err)
        assert not (data / "sun397" / "s.json").exists()
    finally:
        srv.close()


@pytest.mark.parametrize("resource, message", [
    ({"url": "http://127.0.0.1:9/x.tar", "filename": "x.tar", "moves": [["x", "sun397/x"]]}, "has no checksum"),
    ({"url": "http://127.0.0.1:9/x.json", "filename": "x.json", "md5": "0" * 32, "dest": "../outside.json"},
     "relative path inside DATA"),
    ({"url": "ftp://host/x.json", "filename": "x.json", "md5": "0" * 32, "dest": "x.json"}, "http"),
    ({"url": "http://127.0.0.1:9/x.json", "filename": "x.json", "sha265": "0" * 64, "dest": "x.json"},
     "unknown key(s) sha265"),
])
def test_malformed_source_files_are_refused(tmp_path, capsys, resource, message):
    src = write_source(tmp_path / "s.json", {"SUN397": {"resources": [resource]}})
    assert main(["download", "SUN397", "--root", str(tmp_path / "data"), "--source", src]) == 2
    err = flat(capsys.readouterr().err)
    assert err.startswith("ERROR: ") and message in err
    assert not os.path.exists(tmp_path / "data")


def test_unknown_source(tmp_path, capsys):
    assert main(["download", "dtd", "--root", str(tmp_path), "--source", "huggingface"]) == 2
    assert "Unknown --source 'huggingface'" in flat(capsys.readouterr().err)


def test_git_blob_checksum_and_failure_hint(tmp_path, monkeypatch):
    f = tmp_path / "hello.txt"
    f.write_bytes(b"hello\n")
    assert dl.git_blob_sha1(str(f)) == "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object`
    assert dl.verify_checksum(str(f), git_sha1="ce013625030ba8dba906f756967f9e9ca394464a") is True
    srv = Server({})
    try:
        table = {"SUN397": Source([Resource(srv.url + "/SUN397.tar.gz", "SUN397.tar.gz", md5="0" * 32,
                                            moves=[("SUN397", "sun397/SUN397")])],
                                  if_fails=dl.SOURCES["SUN397"].if_fails)}
        with pytest.raises(dl.DownloadError) as exc:
            dl.download("sun397", str(tmp_path), sources=table, out=print)
        assert "HTTP 404" in str(exc.value) and "reported offline" in str(exc.value)
    finally:
        srv.close()


def test_readme_source_file_example_loads(tmp_path):
    import re

    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    datasets_section = readme.split("## Datasets", 1)[1].split("\n## ", 1)[0]
    example = re.search(r"```json\n(.*?)```", datasets_section, re.S).group(1)
    (tmp_path / "example.json").write_text(example)
    table = dl.load_source_file(str(tmp_path / "example.json"))
    assert [r.filename for r in table["SUN397"].resources] == ["SUN397.tar.gz", "split_zhou_SUN397.json"]
    assert all(r.checksummed for r in table["SUN397"].resources)
