"""Every user-facing exception is a ``UserError``, and each one, raised from a real trigger, reaches the user as
one ``ERROR:`` paragraph with exit status 2 (no traceback). A new ``UserError`` subclass without a trigger here
fails ``test_every_user_error_has_a_trigger``."""
from __future__ import annotations

import importlib
import io
import json
import os
import pkgutil
import runpy
import shutil
import subprocess
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout

import pytest

import promptot
from promptot.errors import UserError

from conftest import ROOT, base_args, run_cli, tiny_opts

COOP = "configs/trainers/CoOp/vit_b16_ep50.yaml"
COOP_OPTS = ["TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.PREC", "fp32"]


def all_user_errors() -> set:
    for m in pkgutil.walk_packages(promptot.__path__, "promptot."):
        if not m.name.endswith("__main__") and m.name != "promptot.engine._dassl":  # _dassl needs real Dassl
            importlib.import_module(m.name)
    seen, todo = set(), [UserError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.startswith("promptot") and sub not in seen:
                seen.add(sub)
                todo.append(sub)
    return {c.__name__ for c in seen} | {"UserError"}


def one_paragraph(code: int, err: str, expected_code: int = 2) -> str:
    """The run ends with one ``ERROR:`` paragraph (a progress bar may precede it on stderr) and no traceback."""
    assert code == expected_code, err
    assert "ERROR: " in err and "Traceback" not in err, err
    tail = err[err.index("ERROR: "):]
    assert "\n\n" not in tail.strip(), err
    return tail


def cli(toy_root, tmp_path, clip, *extra, config=COOP, trainer="CoOp", root=None):
    """train.py in-process; ``extra`` holds flags (``--x [value]``, put before the overrides) and KEY VALUE pairs."""
    flags, opts, rest = [], [], list(extra)
    while rest:
        a = rest.pop(0)
        if a.startswith("--"):
            flags.append(a)
            if rest and not rest[0].startswith("--") and a not in ("--eval-only", "--no-train"):
                flags.append(rest.pop(0))
        else:
            opts += [a, rest.pop(0)]
    args = base_args(root or toy_root, tmp_path / "out", trainer, config, clip) + flags
    return run_cli(args + tiny_opts(clip) + COOP_OPTS + opts)


def datasets_cli(*args: str, env=None):
    return _module_cli("promptot.datasets", *args, env=env)


def trained_run(toy_root, tmp_path, clip, extra=()):
    out = tmp_path / "trained"
    code, _, err = run_cli(base_args(toy_root, out, "CoOp", COOP, clip) + tiny_opts(clip) + COOP_OPTS + list(extra))
    assert code == 0, err
    return out


# name -> trigger(toy_root, tmp_path, tiny_vit_path) -> (exit code, stderr)
def t_user_error(toy_root, tmp_path, clip):
    return cli(toy_root, tmp_path, clip, trainer="NoSuchTrainer")[0::2]


def t_config(toy_root, tmp_path, clip):
    return cli(toy_root, tmp_path, clip, "TRAINER.COOP.CLASS_TOKEN_POSITION", "left")[0::2]


def t_dataset_not_found(toy_root, tmp_path, clip):
    return cli(toy_root, tmp_path, clip, root=tmp_path / "empty")[0::2]


def t_corrupt_image(toy_root, tmp_path, clip):
    data = tmp_path / "data"
    shutil.copytree(toy_root, data, ignore=shutil.ignore_patterns("split_fewshot", "split.json"))
    (data / "toy" / "test" / "red" / "red_0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return cli(toy_root, tmp_path, clip, "--eval-only", trainer="ZeroshotCLIP", root=data)[0::2]


def t_unsafe_split(toy_root, tmp_path, clip):
    data = tmp_path / "data"
    (data / "mine" / "cat").mkdir(parents=True)
    shutil.copy(next((toy_root / "toy" / "train" / "red").iterdir()), data / "mine" / "cat" / "a.png")
    (data / "mine" / "split.json").write_text(json.dumps(
        {"train": [["../../../etc/passwd", 0, "cat"]], "val": [], "test": [["cat/a.png", 0, "cat"]]}))
    return cli(toy_root, tmp_path, clip, "DATASET.FOLDER", "mine", root=data)[0::2]


def t_layout(toy_root, tmp_path, clip):
    data = tmp_path / "data"
    shutil.copytree(toy_root, data, ignore=shutil.ignore_patterns("split_fewshot", "split.json"))
    shutil.copytree(data / "toy" / "val" / "red", data / "toy" / "val" / "purple")
    return cli(toy_root, tmp_path, clip, root=data)[0::2]


def t_fmnist(toy_root, tmp_path, clip):
    """The headline case: Fashion-MNIST files absent -> one paragraph naming the apt package, exit 2."""
    os.environ["PROMPTOT_FMNIST_DIR"] = str(tmp_path / "nowhere")
    try:
        args = ["--root", str(tmp_path / "fm"), "--trainer", "CoOp", "--dataset-config-file",
                str(ROOT / "configs/datasets/fashion_mnist_shift.yaml"), "--config-file", str(ROOT / COOP),
                "--output-dir", str(tmp_path / "out")]
        code, _, err = run_cli(args + tiny_opts(clip)[2:] + COOP_OPTS)
        assert "dataset-fashion-mnist" in err
        return code, err
    finally:
        del os.environ["PROMPTOT_FMNIST_DIR"]


def t_backbone_missing(toy_root, tmp_path, clip):
    return cli(toy_root, tmp_path, str(tmp_path / "nowhere" / "ViT-B-16.pt"))[0::2]


def t_backbone_unknown(toy_root, tmp_path, clip):
    return cli(toy_root, tmp_path, clip, "MODEL.BACKBONE.PATH", "", "MODEL.BACKBONE.NAME", "ViT-Q/99")[0::2]


def t_checkpoint_missing(toy_root, tmp_path, clip):
    return cli(toy_root, tmp_path, clip, "--eval-only", "--model-dir", str(tmp_path / "no_run"))[0::2]


def t_checkpoint_corrupt(toy_root, tmp_path, clip):
    out = trained_run(toy_root, tmp_path, clip)
    ck = out / "prompt_learner" / "model.pth.tar-1"
    ck.write_bytes(ck.read_bytes()[:100])
    code, _, err = cli(toy_root, tmp_path, clip, "--eval-only", "--model-dir", str(out), "--load-epoch", "1")
    assert str(ck) in err
    return code, err


def t_checkpoint_mismatch(toy_root, tmp_path, clip):
    out = trained_run(toy_root, tmp_path, clip, ["TRAINER.COOP.CSC", "True"])
    return cli(toy_root, tmp_path, clip, "--eval-only", "--model-dir", str(out), "--load-epoch", "1",
               "TRAINER.COOP.CSC", "True", "DATASET.SUBSAMPLE_CLASSES", "new")[0::2]


def t_download(toy_root, tmp_path, clip):
    return datasets_cli("download", "OxfordPets", "--root", str(tmp_path / "d"), "--mirror",
                        (tmp_path / "empty_mirror").as_uri())


def t_checksum(toy_root, tmp_path, clip):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "pets_images.tar.gz").write_bytes(b"not the archive")
    return datasets_cli("download", "OxfordPets", "--root", str(tmp_path / "d"), "--mirror", mirror.as_uri())


def t_source(toy_root, tmp_path, clip):
    return datasets_cli("download", "EuroSAT", "--root", str(tmp_path / "d"), "--source", "no_such_source")


def t_unknown_dataset(toy_root, tmp_path, clip):
    return datasets_cli("check", "--root", str(tmp_path / "d"), "eurosatt")


def t_nonfinite(toy_root, tmp_path, clip):
    # SGD at 1e38 sends the context to inf after the first step: the next loss is NaN
    return cli(toy_root, tmp_path, clip, "OPTIM.NAME", "sgd", "OPTIM.LR", "1e38", "OPTIM.WARMUP_EPOCH", "0")[0::2]


def t_locked(toy_root, tmp_path, clip):
    import socket

    out = tmp_path / "out"
    out.mkdir()
    # a live process on this host (pid 1 always exists) holds the run directory
    (out / ".promptot.lock").write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "started": "earlier"}))
    return cli(toy_root, tmp_path, clip)[0::2]


# exception name -> (trigger, a phrase the message must contain)
def _module_cli(module: str, *args: str, env=None):
    """``python -m module args`` run in-process (its ``__main__`` through runpy, as ``-m`` does; a subprocess per
    trigger spent most of its time importing torch): (exit code, stderr)."""
    err = io.StringIO()
    saved_argv, saved_env, saved_cwd = sys.argv, dict(os.environ), os.getcwd()
    sys.argv = [module, *args]
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    os.chdir(ROOT)
    code = 0
    try:
        with warnings.catch_warnings(), redirect_stderr(err), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the package is already imported
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
    return code, err.getvalue()


def t_protocol(toy_root, tmp_path, clip):
    return _module_cli("promptot.sweep", "fewshot", "--trainers", "NoSuchMethod", "--dry-run")


def t_sweep_refused(toy_root, tmp_path, clip):
    env = {k: v for k, v in os.environ.items() if k not in ("DATA", "PROMPTOT_DATA")}
    return _module_cli("promptot.sweep", "fewshot", "--trainers", "CoOp", "--datasets", "dtd", env=env)


def t_published(toy_root, tmp_path, clip):
    pub = tmp_path / "published"
    pub.mkdir()
    (pub / "t.yaml").write_text("table: T\nprotocol: base2new\nstatus: unverified\nsource: memory\nentries: []\n")
    return _module_cli("promptot.report", str(tmp_path), "--published", str(pub))


TRIGGERS = {
    "ProtocolError": (t_protocol, "No 'fewshot' entry for ['NoSuchMethod']"),
    "SweepRefused": (t_sweep_refused, "No dataset root"),
    "PublishedError": (t_published, "Only numbers confirmed"),
    "UserError": (t_user_error, "NoSuchTrainer"),
    "ConfigError": (t_config, "CLASS_TOKEN_POSITION"),
    "DatasetNotFoundError": (t_dataset_not_found, "python -m promptot.datasets check"),
    "CorruptImageError": (t_corrupt_image, "red_0.png"),
    "UnsafeSplitPathError": (t_unsafe_split, "passwd"),
    "DatasetLayoutError": (t_layout, "purple"),
    "FashionMNISTNotFound": (t_fmnist, "dataset-fashion-mnist"),
    "BackboneNotFoundError": (t_backbone_missing, "nowhere"),
    "BackboneError": (t_backbone_unknown, "ViT-Q/99"),
    "CheckpointNotFoundError": (t_checkpoint_missing, "no_run"),
    "CheckpointError": (t_checkpoint_corrupt, "truncated or corrupt"),
    "CheckpointMismatchError": (t_checkpoint_mismatch, "class-specific"),
    # `download` goes on with the other datasets after a failed one, then exits 1 (names it could not install)
    "DownloadError": (t_download, "Cannot download", 1),
    "ChecksumError": (t_checksum, "Checksum mismatch", 1),
    "SourceError": (t_source, "no_such_source"),
    "NonFiniteError": (t_nonfinite, "Training stopped at epoch 1, batch"),
    "RunLockedError": (t_locked, "pid 1"),
    "UnknownDatasetError": (t_unknown_dataset, "eurosatt"),
}


def test_every_user_error_has_a_trigger():
    missing = all_user_errors() - set(TRIGGERS)
    assert not missing, f"add a trigger to tests/test_user_errors.py for {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(TRIGGERS))
def test_user_error_is_one_paragraph_exit_2(name, toy_root, tmp_path, tiny_vit_path):
    trigger, phrase, *expected_code = TRIGGERS[name]
    code, err = trigger(toy_root, tmp_path, tiny_vit_path)
    one_paragraph(code, err, *expected_code)
    assert phrase in " ".join(err.split()), err


def test_train_py_without_fashion_mnist_files_exits_2(tmp_path):
    """The real entry point, as a new user runs it, with the Fashion-MNIST files absent."""
    env = dict(os.environ, PROMPTOT_FMNIST_DIR=str(tmp_path / "nowhere"))
    r = subprocess.run([sys.executable, "train.py", "--root", str(tmp_path / "data"), "--trainer", "ZeroshotCLIP",
                        "--dataset-config-file", "configs/datasets/fashion_mnist_shift.yaml", "--config-file",
                        "configs/trainers/CoOp/miniclip.yaml", "--output-dir", str(tmp_path / "out"), "--eval-only"],
                       cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("ERROR: ") and "Traceback" not in r.stderr
    assert "dataset-fashion-mnist" in r.stderr and len(r.stderr.strip().splitlines()) <= 6


def test_a_number_as_dataset_name_is_a_user_error(toy_root, tmp_path, tiny_vit_path):
    """yacs lets ``DATASET.NAME None DATASET.NAME 1`` through as the number 1 (found by test_config_property)."""
    code, _, err = cli(toy_root, tmp_path, tiny_vit_path, "DATASET.NAME", "None", "DATASET.NAME", "1")
    assert "DATASET.NAME must be a dataset name, got 1" in one_paragraph(code, err)


def test_an_empty_trainer_name_option_is_a_user_error(toy_root, tmp_path, tiny_vit_path):
    """``TRAINER.NAME ""`` after ``--trainer CoOp`` (yacs applies the options last; found by test_config_property)."""
    code, _, err = cli(toy_root, tmp_path, tiny_vit_path, "TRAINER.NAME", "")
    msg = one_paragraph(code, err)
    assert "pass --trainer" in msg and "CoOp" in msg, msg
