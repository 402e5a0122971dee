"""``python -m promptot.datasets download NAME --root DATA``: fetch, verify, extract into the expected layout.

Standard library only (urllib). Downloads go to ``DATA/.promptot_downloads/``
as ``<file>.part`` and are resumed with an HTTP Range request; a finished file
is checked against its sha256, md5 or git blob id when one is known (otherwise
reported as "unverified") and kept, so a rerun skips it; a file put into that
folder by hand is verified and used the same way. Archives are extracted into a
staging folder (members escaping it are refused) and the listed members are
moved into place under DATA. What cannot be fetched (account-only ImageNet,
Google-Drive-only files) is printed as manual instructions.

The built-in table is :data:`SOURCES` (``--source official``, the default):
every dataset has an entry, with files to fetch, manual steps, or both. Other
servers: ``--mirror URL`` fetches every file of the recipe as ``URL/<filename>``
(checked against the recipe's checksums), and ``--source FILE.json`` replaces the
recipe by one read from a file in which every file carries a checksum
(:func:`load_source_file`).
"""
from __future__ import annotations

import glob
import hashlib
import json
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
from .names import resolve_name

DOWNLOAD_DIR = ".promptot_downloads"
COOP_DATASETS_PAGE = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"
# MIT-licensed copies of CoOp's split files, pinned to a commit.
_CMA = "https://raw.githubusercontent.com/linzhiqiu/cross_modal_adaptation/c7e7e68ae4eeadfab98e7886b2d6c9cf48a7ceb5/splits/"


class ChecksumError(UserError, RuntimeError):
    """A downloaded file does not match its known checksum (the file is deleted)."""


class DownloadError(UserError, RuntimeError):
    """A file cannot be fetched or installed (network, HTTP status, unsafe or unexpected archive)."""


class SourceError(UserError, ValueError):
    """``--source`` names no built-in source, or a source file is malformed or lacks a dataset."""


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
    git_sha1: Optional[str] = None  # git blob id of the file at a pinned commit

    @property
    def checksummed(self) -> bool:
        return bool(self.sha256 or self.md5 or self.git_sha1)


@dataclass
class Source:
    """How one dataset is obtained: files to fetch, steps left to the user, hints when a fetch fails."""

    resources: List[Resource] = field(default_factory=list)
    manual: List[str] = field(default_factory=list)  # steps the user must do (the command then exits 1)
    imagenet_classnames: Optional[str] = None  # folder that gets the packaged classnames.txt
    if_fails: List[str] = field(default_factory=list)  # added to the error when a file cannot be fetched

    @property
    def kind(self) -> str:
        """"recipe", "recipe + manual steps" or "manual steps" (for ``list``)."""
        if self.resources:
            return "recipe + manual steps" if self.manual else "recipe"
        return "manual steps"


def _split(name: str, folder: str, sha256: Optional[str] = None, git_sha1: Optional[str] = None) -> Resource:
    fname = f"split_zhou_{name}.json"
    return Resource(_CMA + fname, fname, sha256=sha256, git_sha1=git_sha1, dest=f"{folder}/{fname}")


# Checksums: md5 values are those torchvision uses for the same files. The split files and
# cat_to_name.json come from the pinned commit of cross_modal_adaptation: sha256 of the file
# content at that commit (four of them equal the copies in shared/data/coop_splits), or, for
# the two files that were not readable, their git blob id at that commit. None = unverified.
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
        _split("Food101", "food-101", git_sha1="39557040ee6501bd32aa8b5dfd75f7941a32f0a7"),
    ]),
    "OxfordFlowers": Source([
        Resource("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz", "102flowers.tgz",
                 md5="52808999861908f626f3c1f4e79d11fa", moves=[("jpg", "oxford_flowers/jpg")]),
        Resource("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat", "imagelabels.mat",
                 md5="e0620be6f572b9609742df49c70aed4d", dest="oxford_flowers/imagelabels.mat"),
        Resource(_CMA + "cat_to_name.json", "cat_to_name.json", dest="oxford_flowers/cat_to_name.json",
                 sha256="0469f1ad7fe0072d98155c49aa58649d998edbbe3326229003aa5f7228525236"),
        _split("OxfordFlowers", "oxford_flowers", "2f50c42fc1a17ca13c271cb4269b1347bdb43d2be672e34f74a4e4cbfbcca794"),
    ]),
    "FGVCAircraft": Source([
        Resource("https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                 "fgvc-aircraft-2013b.tar.gz", moves=[("fgvc-aircraft-2013b/data", "fgvc_aircraft")]),
    ]),
    "SUN397": Source([
        Resource("http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz", "SUN397.tar.gz",
                 md5="8ca2778205c41d23104230ba66911c7a", moves=[("SUN397", "sun397/SUN397")]),
        _split("SUN397", "sun397", git_sha1="8d5725db8f70bcf02245665304f863e68f96a24c"),
    ], if_fails=[
        "The Princeton host of SUN397.tar.gz has been reported offline since 2025 (KaiyangZhou/CoOp#90). If the "
        "download fails, get SUN397.tar.gz (md5 8ca2778205c41d23104230ba66911c7a) elsewhere and either put it "
        f"into DATA/{DOWNLOAD_DIR}/ and rerun this command (it is verified and extracted), or extract it so that "
        "DATA/sun397/SUN397/a/abbey/*.jpg exists. With split_zhou_SUN397.json in place the partition files "
        "(Partitions.zip) are not needed. A server of your own can be named with --source FILE.json."]),
    "UCF101": Source([
        Resource("https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip",
                 "UCF101TrainTestSplits-RecognitionTask.zip", moves=[("**/ucfTrainTestlist", "ucf101/ucfTrainTestlist")]),
        _split("UCF101", "ucf101", "d78cb834f7c5792ceaff2c5ee2d7c76a9e4086e48a3a6b01232989d29cbefdd8"),
    ], manual=[f"The mid-frame images UCF-101-midframes.zip are distributed by CoOp through Google Drive: get "
               f"it from {COOP_DATASETS_PAGE} and extract it so that DATA/ucf101/UCF-101-midframes/<Action>/*.jpg "
               "exists."]),
    "StanfordCars": Source([_split("StanfordCars", "stanford_cars",
                                   "40acee7aa65c8e4727a32d90e884b7c3f8960b523422317e163f7af65432959d")], manual=[
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
    "FashionMNIST": Source(manual=[
        "Nothing to download here: the images are written under DATA/fashion_mnist/ on first use, from the "
        "Debian package (apt-get install dataset-fashion-mnist) or from the four *-idx?-ubyte files in the "
        "folder named by PROMPTOT_FMNIST_DIR."]),
    "FashionMNISTShift": Source(manual=[
        "Nothing to download here: the shifted images are written under DATA/fashion_mnist_shift/ on first "
        "use, from the Debian package (apt-get install dataset-fashion-mnist) or from the four *-idx?-ubyte "
        "files in the folder named by PROMPTOT_FMNIST_DIR."]),
    "ImageFolder": Source(manual=[
        "ImageFolder is your own data, so there is nothing to download: put one folder per class under "
        "DATA/FOLDER (or train/, val/, test/ folders of class folders, or a split.json in CoOp's format) and "
        "set DATASET.FOLDER (see configs/datasets/image_folder.yaml)."]),
}

BUILTIN_SOURCE = "official"


# ----------------------------------------------------------------------------- fetching
def git_blob_sha1(path: str) -> str:
    """The id git gives the file's content (sha1 of ``b"blob <size>\\0"`` + content)."""
    h = hashlib.sha1(f"blob {osp.getsize(path)}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _checksum(path: str, sha256: Optional[str], md5: Optional[str], git_sha1: Optional[str]
              ) -> Optional[Tuple[str, str, str]]:
    """(algorithm, expected, actual) for the strongest known checksum, None when none is known."""
    if sha256:
        return "sha256", sha256.lower(), file_digest(path, "sha256")
    if md5:
        return "md5", md5.lower(), file_digest(path, "md5")
    if git_sha1:
        return "git blob sha1", git_sha1.lower(), git_blob_sha1(path)
    return None


def verify_checksum(path: str, sha256: Optional[str] = None, md5: Optional[str] = None,
                    git_sha1: Optional[str] = None) -> Optional[bool]:
    """True/False when a checksum is known, None when unverified."""
    got = _checksum(path, sha256, md5, git_sha1)
    return None if got is None else got[1] == got[2]


def fetch(url: str, dest: str, sha256: Optional[str] = None, md5: Optional[str] = None,
          out: Callable[[str], None] = print, timeout: float = 60.0, git_sha1: Optional[str] = None) -> str:
    """Download ``url`` to ``dest`` via ``dest.part``, resuming with HTTP Range; verify; return ``dest``."""
    if osp.exists(dest):
        ok = verify_checksum(dest, sha256, md5, git_sha1)
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
    check = _checksum(part, sha256, md5, git_sha1)
    ok = None if check is None else check[1] == check[2]
    if check is not None and not ok:
        algo, want, got = check
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
    """Put a fetched file into the layout under ``root`` (destinations outside ``root`` are refused)."""
    base = osp.normpath(osp.abspath(root))
    for target in ([res.dest or res.filename] if res.moves is None else [d for _, d in res.moves]):
        if not _inside(base, target):
            raise DownloadError(f"Refusing to install {res.filename} to {target!r}: outside {base}.")
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
    """Fetch and install dataset ``name`` under ``root``. Returns 0, or 1 when manual steps remain.

    ``name`` may be any accepted dataset name (``dtd``, ``DTD``, ``DescribableTextures``).
    A dataset whose entry has no files prints its manual steps and returns 1.
    """
    sources = SOURCES if sources is None else sources
    if name not in sources:
        name = resolve_name(name)
        if name not in sources:
            raise SourceError(f"The source table in use has no entry for {name} (it has: {', '.join(sources)}). "
                              f"Add one to the source file, or fetch {name} with --source {BUILTIN_SOURCE}.")
    src = sources[name]
    root = osp.abspath(osp.expanduser(root))
    cache = osp.join(root, DOWNLOAD_DIR)
    out(f"{name}: into {root}")
    for res in src.resources:
        if _installed(res, root):
            out(f"  {res.filename}: already in place")
            continue
        url = f"{mirror.rstrip('/')}/{res.filename}" if mirror else res.url
        try:
            archive = fetch(url, osp.join(cache, res.filename), res.sha256, res.md5, out=out, git_sha1=res.git_sha1)
        except DownloadError as exc:
            if not src.if_fails:
                raise
            raise DownloadError(" ".join([str(exc)] + src.if_fails)) from exc
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
    if src.resources or src.imagenet_classnames:
        out(f"Then check it: python -m promptot.datasets check --root {root} {name}")
    return 1 if src.manual else 0


def manual_steps(names: Sequence[str]) -> List[str]:
    return [f"{n}: {m}" for n in names for m in SOURCES.get(n, Source()).manual]


# ----------------------------------------------------------------------------- other sources
_HEX = {"sha256": 64, "md5": 32, "git_sha1": 40}
_RESOURCE_KEYS = {"url", "filename", "dest", "moves"} | set(_HEX)


def _safe_relpath(value: object) -> bool:
    """A relative path that stays inside the folder it is joined to."""
    if not isinstance(value, str) or not value or osp.isabs(value) or value.startswith(("/", "\\")):
        return False
    return ".." not in value.replace("\\", "/").split("/")


def _parse_resource(raw: object, where: str) -> Resource:
    if not isinstance(raw, dict):
        raise SourceError(f"{where}: each resource must be an object with url, filename, a checksum and dest or "
                          "moves.")
    unknown = sorted(set(raw) - _RESOURCE_KEYS)
    if unknown:
        raise SourceError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(sorted(_RESOURCE_KEYS))}.")
    url, filename = raw.get("url"), raw.get("filename")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise SourceError(f"{where}: 'url' must be an http:// or https:// URL, got {url!r}.")
    if not isinstance(filename, str) or not filename or filename in (".", "..") or "/" in filename \
            or "\\" in filename:
        raise SourceError(f"{where}: 'filename' must be a plain file name (it is saved under DATA/{DOWNLOAD_DIR}/), "
                          f"got {filename!r}.")
    sums = {}
    for algo, n in _HEX.items():
        value = raw.get(algo)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) != n or any(c not in "0123456789abcdefABCDEF" for c in value):
            raise SourceError(f"{where}: '{algo}' must be {n} hexadecimal digits, got {value!r}.")
        sums[algo] = value.lower()
    if not sums:
        raise SourceError(f"{where}: {filename} has no checksum. A source file must give sha256 (or md5, or the "
                          "git blob id as git_sha1) for every file, so that what a mirror serves is verified.")
    dest, moves = raw.get("dest"), raw.get("moves")
    if (dest is None) == (moves is None):
        raise SourceError(f"{where}: give either 'dest' (where the file goes under DATA) or 'moves' "
                          "([[member glob in the archive, destination under DATA], ...]), not both or neither.")
    if dest is not None and not _safe_relpath(dest):
        raise SourceError(f"{where}: 'dest' must be a relative path inside DATA, got {dest!r}.")
    pairs: Optional[List[Tuple[str, str]]] = None
    if moves is not None:
        if not isinstance(moves, list) or not moves or not all(
                isinstance(m, list) and len(m) == 2 and all(_safe_relpath(x) for x in m) for m in moves):
            raise SourceError(f"{where}: 'moves' must be a non-empty list of [member glob, destination] pairs of "
                              f"relative paths without '..', got {moves!r}.")
        pairs = [(m[0], m[1]) for m in moves]
    return Resource(url, filename, sha256=sums.get("sha256"), md5=sums.get("md5"), git_sha1=sums.get("git_sha1"),
                    moves=pairs, dest=dest)


def load_source_file(path: str) -> Dict[str, Source]:
    """Read a recipe table from a JSON file (``--source FILE.json``).

    Format: ``{"datasets": {NAME: {"resources": [...], "manual": ["...", ...]}}}``
    with NAME any accepted dataset name. A resource is ``{"url", "filename", "sha256"
    | "md5" | "git_sha1", "dest" | "moves"}``: ``dest`` places a plain file at
    ``DATA/dest``; ``moves`` lists ``[member glob, destination under DATA]`` pairs
    for an archive, as in :data:`SOURCES`. Every file must carry a checksum.
    """
    try:
        with open(path, "r") as f:
            data = json.load(f)
    except OSError as exc:
        raise SourceError(f"Cannot read the source file {path}: {exc.strerror or exc}.") from exc
    except json.JSONDecodeError as exc:
        raise SourceError(f"The source file {path} is not valid JSON: {exc}.") from exc
    entries = data.get("datasets") if isinstance(data, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise SourceError(f"The source file {path} must be a JSON object with a non-empty \"datasets\" object "
                          "mapping dataset names to {\"resources\": [...], \"manual\": [...]}.")
    table: Dict[str, Source] = {}
    for key, entry in entries.items():
        try:
            name = resolve_name(key)
        except UserError as exc:
            raise SourceError(f"{path}: {exc}") from exc
        where = f"{path}, {key}"
        if not isinstance(entry, dict) or set(entry) - {"resources", "manual"}:
            raise SourceError(f"{where}: an entry is an object with the keys 'resources' and/or 'manual'.")
        resources = entry.get("resources", [])
        manual = entry.get("manual", [])
        if not isinstance(resources, list) or not isinstance(manual, list) \
                or not all(isinstance(m, str) for m in manual) or not (resources or manual):
            raise SourceError(f"{where}: 'resources' must be a list of files and 'manual' a list of strings; "
                              "give at least one of them.")
        official = SOURCES.get(name, Source())
        table[name] = Source([_parse_resource(r, f"{where}, resource {i + 1}") for i, r in enumerate(resources)],
                             manual=list(manual), imagenet_classnames=official.imagenet_classnames)
    return table


def select_source(source: str) -> Dict[str, Source]:
    """The recipe table for ``--source``: ``official`` (built in) or the path of a JSON source file."""
    if source == BUILTIN_SOURCE:
        return SOURCES
    if osp.isfile(osp.expanduser(source)):
        return load_source_file(osp.expanduser(source))
    raise SourceError(f"Unknown --source {source!r}: use {BUILTIN_SOURCE!r} (the default: the datasets' own hosts "
                      "and pinned copies of CoOp's split files) or the path of a JSON source file listing "
                      "checksummed URLs (format: promptot.datasets.download.load_source_file).")
