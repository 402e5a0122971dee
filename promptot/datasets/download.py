"""``python -m promptot.datasets download NAME --root DATA``: fetch, verify, extract into the expected layout.

Standard library only (urllib). Downloads go to ``DATA/.promptot_downloads/``
as ``<file>.part`` and are resumed with an HTTP Range request; a finished file
is checked against its sha256/md5 when one is known (otherwise reported as
"unverified") and kept, so a rerun skips it. Archives are extracted into a
staging folder (members escaping it are refused) and the listed members are
moved into place under DATA. What cannot be fetched (account-only ImageNet,
Google-Drive-only files) is printed as manual instructions.

The table is :data:`SOURCES`; pass ``sources=`` or ``mirror=`` (``--mirror URL``:
every file is fetched as ``URL/<filename>``) to use another server.
"""
from __future__ import annotations

import glob
import os
import os.path as osp
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from promptot.errors import UserError
from promptot.fileio import file_digest

from .common import packaged_imagenet_classnames_file

DOWNLOAD_DIR = ".promptot_downloads"
COOP_DATASETS_PAGE = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"
# MIT-licensed copies of CoOp's split files, pinned to a commit.
_CMA = "https://raw.githubusercontent.com/linzhiqiu/cross_modal_adaptation/c7e7e68ae4eeadfab98e7886b2d6c9cf48a7ceb5/splits/"


class ChecksumError(UserError, RuntimeError):
    """A downloaded file does not match its known checksum (the file is deleted)."""


class DownloadError(UserError, RuntimeError):
    """A file could not be fetched (the message names the URL and what to do)."""


@dataclass
class Resource:
    """One file to fetch.

    ``moves``: for archives, ``(member glob inside the archive, destination under DATA)``;
    a member that is itself an archive is extracted into the destination. ``None``:
    the file is not an archive and is copied to ``dest`` (a path under DATA).
    """

    url: str
    filename: str
    sha256: Optional[str] = None
    md5: Optional[str] = None
    moves: Optional[List[Tuple[str, str]]] = None
    dest: Optional[str] = None


@dataclass
class Source:
    resources: List[Resource] = field(default_factory=list)
    manual: List[str] = field(default_factory=list)
    imagenet_classnames: Optional[str] = None  # folder that gets the packaged classnames.txt


def _split(name: str, folder: str, sha256: Optional[str] = None) -> Resource:
    fname = f"split_zhou_{name}.json"
    return Resource(_CMA + fname, fname, sha256=sha256, dest=f"{folder}/{fname}")


def _drive_split(name: str, folder: str) -> str:
    return (f"split_zhou_{name}.json is distributed through Google Drive only: get it from the link in "
            f"{COOP_DATASETS_PAGE} and save it as DATA/{folder}/split_zhou_{name}.json")


# Checksums: md5 values are those torchvision uses for the same files; the sha256 of the
# four split files are those of the copies in shared/data/coop_splits. None = unverified.
SOURCES: Dict[str, Source] = {
    "OxfordPets": Source([
        Resource("https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz", "pets_images.tar.gz",
                 md5="5c4f3ee8e5d25df40f4fd59a7f44e54c", moves=[("images", "oxford_pets/images")]),
        Resource("https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz", "pets_annotations.tar.gz",
                 md5="95a8c909bbe2e81eed6a22bccdf3f68f", moves=[("annotations", "oxford_pets/annotations")]),
        _split("OxfordPets", "oxford_pets", "d7f3ffe65b3919f95132e51422894ae18686b83c331fd8c0adcdc3dc2de6301e"),
    ]),
    "Caltech101": Source([
        Resource("https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip", "caltech-101.zip",
                 md5="3138e1922a9193bfa496528edbbc45d0",
                 moves=[("caltech-101/101_ObjectCategories.tar.gz", "caltech-101")]),
        _split("Caltech101", "caltech-101", "52ce83205ff8ff8a1a18119aad6376120ae35c36e783a984bc560cbf10e73fa5"),
    ]),
    "DescribableTextures": Source([
        Resource("https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz", "dtd-r1.0.1.tar.gz",
                 md5="fff73e5086ae6bdbea199a49dfb8a4c1", moves=[("dtd/images", "dtd/images")]),
        _split("DescribableTextures", "dtd", "f26ebeccd2b58e68d70f07a0dc39fe49bf7b69024bac34396b954dfd87969c38"),
    ]),
    "EuroSAT": Source([
        Resource("https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
                 "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip", "EuroSAT.zip",
                 md5="c8fa014336c82ac7804f0398fcb19387", moves=[("2750", "eurosat/2750")]),
        _split("EuroSAT", "eurosat", "541503a77d0b26b735d85ec7a3e672804fe0aa466c2e5f07da772cc6c0af8ad2"),
    ]),
    "Food101": Source([
        Resource("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz", "food-101.tar.gz",
                 md5="85eeb15f3717b99a5da872d97d918f87", moves=[("food-101", "food-101")]),
    ], manual=[_drive_split("Food101", "food-101")]),
    "OxfordFlowers": Source([
        Resource("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz", "102flowers.tgz",
                 md5="52808999861908f626f3c1f4e79d11fa", moves=[("jpg", "oxford_flowers/jpg")]),
        Resource("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat", "imagelabels.mat",
                 md5="e0620be6f572b9609742df49c70aed4d", dest="oxford_flowers/imagelabels.mat"),
        Resource(_CMA + "cat_to_name.json", "cat_to_name.json", dest="oxford_flowers/cat_to_name.json"),
        _split("OxfordFlowers", "oxford_flowers"),
    ]),
    "FGVCAircraft": Source([
        Resource("https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                 "fgvc-aircraft-2013b.tar.gz", moves=[("fgvc-aircraft-2013b/data", "fgvc_aircraft")]),
    ]),
    "SUN397": Source([
        Resource("http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz", "SUN397.tar.gz",
                 md5="8ca2778205c41d23104230ba66911c7a", moves=[("SUN397", "sun397/SUN397")]),
        Resource("https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip", "SUN397_Partitions.zip",
                 moves=[("**/ClassName.txt", "sun397/ClassName.txt"), ("**/Training_01.txt", "sun397/Training_01.txt"),
                        ("**/Testing_01.txt", "sun397/Testing_01.txt")]),
    ], manual=[_drive_split("SUN397", "sun397")]),
    "UCF101": Source([
        Resource("https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip",
                 "UCF101TrainTestSplits-RecognitionTask.zip", moves=[("**/ucfTrainTestlist", "ucf101/ucfTrainTestlist")]),
        _split("UCF101", "ucf101"),
    ], manual=[f"The mid-frame images UCF-101-midframes.zip are distributed by CoOp through Google Drive: get "
               f"it from {COOP_DATASETS_PAGE} and extract it so that DATA/ucf101/UCF-101-midframes/<Action>/*.jpg "
               "exists."]),
    "StanfordCars": Source([_split("StanfordCars", "stanford_cars")], manual=[
        "The original Stanford Cars site (ai.stanford.edu/~jkrause/cars) is offline. Get cars_train/, cars_test/, "
        "devkit/ and cars_test_annos_withlabels.mat from a mirror listed in " + COOP_DATASETS_PAGE +
        " or the torchvision StanfordCars documentation, into DATA/stanford_cars/."]),
    "ImageNet": Source(manual=[
        "ImageNet requires an account: download ILSVRC2012 train and val from https://image-net.org/download.php, "
        "and arrange DATA/imagenet/images/train/<wnid>/*.JPEG and DATA/imagenet/images/val/<wnid>/*.JPEG "
        "(val sorted into wnid folders, e.g. with the valprep.sh script). classnames.txt is written for you."],
        imagenet_classnames="imagenet"),
    "ImageNetV2": Source([
        Resource("https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/imagenetv2-matched-frequency.tar.gz",
                 "imagenetv2-matched-frequency.tar.gz",
                 moves=[("imagenetv2-matched-frequency-format-val", "imagenetv2/imagenetv2-matched-frequency-format-val")]),
    ], imagenet_classnames="imagenetv2"),
    "ImageNetSketch": Source(manual=[
        "ImageNet-Sketch is distributed through Google Drive / Kaggle / Hugging Face (see "
        "https://github.com/HaohanWang/ImageNet-Sketch); extract it so that DATA/imagenet-sketch/images/<wnid>/* "
        "exists."], imagenet_classnames="imagenet-sketch"),
    "ImageNetA": Source([
        Resource("https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar", "imagenet-a.tar",
                 moves=[("imagenet-a", "imagenet-adversarial/imagenet-a")]),
    ], imagenet_classnames="imagenet-adversarial"),
    "ImageNetR": Source([
        Resource("https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar", "imagenet-r.tar",
                 moves=[("imagenet-r", "imagenet-rendition/imagenet-r")]),
    ], imagenet_classnames="imagenet-rendition"),
}


# ----------------------------------------------------------------------------- fetching
def verify_checksum(path: str, sha256: Optional[str] = None, md5: Optional[str] = None) -> Optional[bool]:
    """True/False when a checksum is known, None when unverified."""
    if sha256:
        return file_digest(path, "sha256") == sha256.lower()
    if md5:
        return file_digest(path, "md5") == md5.lower()
    return None


def fetch(url: str, dest: str, sha256: Optional[str] = None, md5: Optional[str] = None,
          out: Callable[[str], None] = print, timeout: float = 60.0) -> str:
    """Download ``url`` to ``dest`` via ``dest.part``, resuming with HTTP Range; verify; return ``dest``."""
    if osp.exists(dest):
        ok = verify_checksum(dest, sha256, md5)
        if ok is not False:
            out(f"  have {osp.basename(dest)}" + (" (checksum OK)" if ok else " (unverified: no known checksum)"))
            return dest
        out(f"  {osp.basename(dest)} exists but its checksum is wrong; downloading again")
        os.remove(dest)
    os.makedirs(osp.dirname(dest) or ".", exist_ok=True)
    part = dest + ".part"
    start = osp.getsize(part) if osp.exists(part) else 0
    headers = {"User-Agent": "promptot-datasets"}
    if start:
        headers["Range"] = f"bytes={start}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            if start and resp.status == 206:
                mode = "ab"
                out(f"  resuming {url} at byte {start}")
            else:
                mode, start = "wb", 0
                out(f"  downloading {url}")
            with open(part, mode) as f:
                shutil.copyfileobj(resp, f, 1 << 20)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not start:  # 416: the .part already holds the whole file
            raise DownloadError(f"Cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"Cannot download {url}: {exc}. Rerun the command to resume "
                            f"({osp.getsize(part) if osp.exists(part) else 0} bytes kept in {part}).") from exc
    ok = verify_checksum(part, sha256, md5)
    if ok is False:
        algo, want = ("sha256", sha256) if sha256 else ("md5", md5)
        got = file_digest(part, algo)
        os.remove(part)
        raise ChecksumError(f"Checksum mismatch for {url}: {algo} {got}, expected {want}. "
                            "The file was deleted; rerun to download it again, or check the URL/mirror.")
    os.replace(part, dest)
    out(f"  saved {dest}" + (" (checksum OK)" if ok else " (unverified: no known checksum)"))
    return dest


# ----------------------------------------------------------------------------- extraction
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip", ".tar.bz2", ".tar.xz")


def is_archive(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def _inside(base: str, name: str) -> bool:
    target = osp.normpath(osp.join(base, name))
    return not osp.isabs(name) and (target == base or target.startswith(base + os.sep))


def safe_extract(archive: str, dest: str) -> None:
    """Extract a tar/zip archive into ``dest``, refusing members that escape it (and tar links/devices)."""
    dest = osp.normpath(osp.abspath(dest))
    os.makedirs(dest, exist_ok=True)
    if archive.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if not _inside(dest, name):
                    raise DownloadError(f"Refusing archive member {name!r} of {archive}: outside {dest}")
            zf.extractall(dest)
        return
    with tarfile.open(archive) as tf:
        members = []
        for m in tf.getmembers():
            if not _inside(dest, m.name):
                raise DownloadError(f"Refusing archive member {m.name!r} of {archive}: outside {dest}")
            if m.isfile() or m.isdir():
                members.append(m)
        tf.extractall(dest, members=members)


def _merge_move(src: str, dst: str) -> None:
    if osp.isdir(src) and osp.isdir(dst):
        for entry in os.listdir(src):
            _merge_move(osp.join(src, entry), osp.join(dst, entry))
        return
    if osp.exists(dst):
        return  # keep what is already in place
    os.makedirs(osp.dirname(dst) or ".", exist_ok=True)
    shutil.move(src, dst)


def install(res: Resource, archive: str, root: str, out: Callable[[str], None] = print) -> None:
    """Put a fetched file into the layout under ``root``."""
    if res.moves is None:
        dst = osp.join(root, res.dest or res.filename)
        if not osp.exists(dst):
            os.makedirs(osp.dirname(dst) or ".", exist_ok=True)
            shutil.copyfile(archive, dst)
        out(f"  -> {dst}")
        return
    staging = archive + ".extract"
    shutil.rmtree(staging, ignore_errors=True)
    out(f"  extracting {osp.basename(archive)}")
    safe_extract(archive, staging)
    try:
        for pattern, dest in res.moves:
            matches = sorted(glob.glob(osp.join(staging, pattern), recursive=True))
            if not matches:
                raise DownloadError(f"{osp.basename(archive)} has no member matching {pattern!r}")
            src, dst = matches[0], osp.join(root, dest)
            if is_archive(src) and osp.isfile(src):
                safe_extract(src, dst)
            else:
                _merge_move(src, dst)
            out(f"  -> {dst}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _marker(res: Resource, root: str) -> str:
    return osp.join(root, DOWNLOAD_DIR, res.filename + ".installed")


def _installed(res: Resource, root: str) -> bool:
    """A file is in place when its destination exists; an archive when it was extracted and its targets exist."""
    if res.moves is None:
        return osp.exists(osp.join(root, res.dest or res.filename))
    return osp.exists(_marker(res, root)) and all(osp.exists(osp.join(root, d)) for _, d in res.moves)


def download(name: str, root: str, sources: Optional[Dict[str, Source]] = None, mirror: Optional[str] = None,
             out: Callable[[str], None] = print, keep_archives: bool = True) -> int:
    """Fetch and install dataset ``name`` under ``root``. Returns 0, or 1 when manual steps remain."""
    sources = SOURCES if sources is None else sources
    if name not in sources:
        raise KeyError(f"No download recipe for {name!r}. Known: {', '.join(sources)}")
    src = sources[name]
    root = osp.abspath(osp.expanduser(root))
    cache = osp.join(root, DOWNLOAD_DIR)
    out(f"{name}: into {root}")
    for res in src.resources:
        if _installed(res, root):
            out(f"  {res.filename}: already in place")
            continue
        url = f"{mirror.rstrip('/')}/{res.filename}" if mirror else res.url
        archive = fetch(url, osp.join(cache, res.filename), res.sha256, res.md5, out=out)
        install(res, archive, root, out=out)
        if res.moves is not None:
            open(_marker(res, root), "w").close()
        if not keep_archives:
            os.remove(archive)
    if src.imagenet_classnames:
        dst = osp.join(root, src.imagenet_classnames, "classnames.txt")
        if not osp.exists(dst):
            os.makedirs(osp.dirname(dst), exist_ok=True)
            shutil.copyfile(packaged_imagenet_classnames_file(), dst)
            out(f"  wrote {dst} (CLIP's cleaned ImageNet class names)")
    for line in src.manual:
        out("  MANUAL: " + line)
    out(f"Then check it: python -m promptot.datasets check --root {root} {name}")
    return 1 if src.manual else 0


def manual_steps(names: Sequence[str]) -> List[str]:
    return [f"{n}: {m}" for n in names for m in SOURCES.get(n, Source()).manual]
