"""Shared fixtures: a tiny OpenAI-format CLIP saved to disk and a tiny labelled image folder.

Everything is generated here (no downloads); runs through the same loading paths a user's
files take (``MODEL.BACKBONE.PATH`` and ``DATASET.NAME ImageFolder``).
"""
from __future__ import annotations

import io
import sys
from contextlib import redirect_stderr
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200), "yellow": (200, 200, 40)}


def make_toy_folder(root: Path, n_train: int = 6, n_val: int = 2, n_test: int = 3, size: int = 36, seed: int = 0) -> Path:
    """``root/toy/{train,val,test}/<colour>/<i>.png``: noisy flat-colour images, 4 classes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for cname, col in COLOURS.items():
            d = root / "toy" / split / cname
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = np.clip(np.array(col)[None, None] + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(d / f"{cname}_{i}.png")
    return root


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    return make_toy_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tiny_vit_path(tmp_path_factory) -> str:
    from promptot.clip import build_tiny_clip, save_openai_state_dict

    path = tmp_path_factory.mktemp("clip") / "tiny_vit.pt"
    save_openai_state_dict(build_tiny_clip("vit", image_size=32, seed=0), str(path))
    return str(path)


@pytest.fixture(scope="session")
def tiny_rn_path(tmp_path_factory) -> str:
    from promptot.clip import build_tiny_clip, save_openai_state_dict

    path = tmp_path_factory.mktemp("clip") / "tiny_rn.pt"
    save_openai_state_dict(build_tiny_clip("rn", image_size=64, seed=0), str(path))
    return str(path)


def tiny_opts(clip_path: str, size: int = 32, epochs: int = 1, batch: int = 4) -> List[str]:
    """KEY VALUE overrides that shrink a paper config to the tiny model and toy data."""
    return ["DATASET.FOLDER", "toy", "MODEL.BACKBONE.NAME", "", "MODEL.BACKBONE.PATH", clip_path,
            "INPUT.SIZE", f"({size}, {size})", "OPTIM.MAX_EPOCH", str(epochs), "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", str(batch), "DATALOADER.TEST.BATCH_SIZE", "8"]


def run_cli(argv: List[str]) -> Tuple[int, str, str]:
    """Run ``train.py`` in-process; returns (exit code, stdout incl. log tee, stderr)."""
    import train
    from promptot.engine.utils import Logger
    from promptot.errors import UserError, format_user_error

    class Capture(io.StringIO):
        def close(self) -> None:  # real Dassl's logger closes the stream it wraps; keep what was captured
            pass

    out, err = Capture(), io.StringIO()
    saved = sys.stdout
    sys.stdout = out
    code = 0
    try:
        with redirect_stderr(err):
            try:
                train.main(train.build_parser().parse_args(argv))
            except UserError as e:
                print(format_user_error(e), file=sys.stderr)
                code = 2
    finally:
        if isinstance(sys.stdout, Logger) or (sys.stdout is not out and hasattr(sys.stdout, "console")):
            sys.stdout.close()  # the log tee of either engine
        sys.stdout = saved
    return code, out.getvalue(), err.getvalue()


def base_args(toy_root: Path, out_dir: Path, trainer: str, config: str, clip_path: str, seed: int = 1) -> List[str]:
    return ["--root", str(toy_root), "--trainer", trainer, "--dataset-config-file",
            str(ROOT / "configs/datasets/image_folder.yaml"), "--config-file", str(ROOT / config),
            "--output-dir", str(out_dir), "--seed", str(seed)]


def base_then_new(build, tmp_path: Path):
    """Base-to-new in one test: ``build(out_dir, extra)`` a trainer on the base classes, train one step, save; build one
    on the new classes and load the saved prompts. Returns ``(base, new)``."""
    base = build(tmp_path / "base", ["DATASET.SUBSAMPLE_CLASSES", "base"])
    check_one_training_step(base)
    base.save_model(0, str(tmp_path / "ck"))
    new = build(tmp_path / "new", ["DATASET.SUBSAMPLE_CLASSES", "new"])
    assert set(new.classnames).isdisjoint(base.classnames)
    new.load_model(str(tmp_path / "ck"), epoch=1)
    return base, new


def resolved_reference_config(toy_root: Path, out_dir: Path, name: str):
    """``configs/trainers/<name>.yaml`` (name ``"<Trainer>/<file>"``) as ``train.py`` reads it: the yacs config and the
    trainer's typed config."""
    import train
    import trainers  # noqa: F401  (registers the trainers)
    from promptot.config import resolve
    from promptot.engine import TRAINER_REGISTRY

    trainer = name.split("/")[0]
    argv = base_args(toy_root, out_dir, trainer, f"configs/trainers/{name}.yaml", "")
    cfg = train.setup_cfg(train.build_parser().parse_args(argv))
    return cfg, resolve(cfg, TRAINER_REGISTRY.get(trainer).config_class)


@pytest.fixture(autouse=True)
def _no_network_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print the accuracies the mini-CLIP regression runs measured (they are part of the record)."""
    mod = sys.modules.get("test_regression_miniclip")
    if mod is not None and getattr(mod, "RECORDED", None):
        terminalreporter.section("mini CLIP accuracies on FashionMNISTShift (seed 1, test split)")
        for line in mod.pytest_terminal_summary_lines():
            terminalreporter.write_line(line)


def check_one_training_step(tr) -> set:
    """Run one ``forward_backward`` on a built trainer and check: finite loss, a nonzero finite gradient on
    every learnable parameter, no gradient on anything else, the prompts updated, every CLIP weight unchanged.
    Returns the names of the changed state-dict entries of the registered modules."""
    import torch

    names = tr.get_model_names()
    learnable = {id(p) for n in names for p in tr._models[n].parameters() if p.requires_grad}
    before = {(n, k): v.detach().clone() for n in names for k, v in tr._models[n].state_dict().items()}
    frozen_before = {k: v.detach().clone() for k, v in tr.model.clip.state_dict().items()}
    tr.set_model_mode("train")
    tr.num_batches, tr.batch_idx, tr.epoch = 10, 0, 0
    summary = tr.forward_backward(next(iter(tr.train_loader_x)))
    assert torch.isfinite(torch.tensor(summary["loss"]))
    for n, p in tr.model.named_parameters():
        if id(p) in learnable:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, f"frozen parameter {n} received a gradient"
    changed = {k for n in names for k, v in tr._models[n].state_dict().items() if not torch.equal(v, before[(n, k)])}
    assert changed, "the optimizer step did not update the prompts"
    for k, v in tr.model.clip.state_dict().items():
        assert torch.equal(v, frozen_before[k]), f"frozen CLIP weight {k} changed"
    return changed


def _import_trainer_test_modules() -> None:
    """Import the test modules that register trainers (e.g. a toy method built from shared parts) before any
    test is collected, so the registry-driven tests (``test_registry.py``) see them whatever the file order."""
    import importlib

    here = Path(__file__).resolve().parent
    if str(here) not in sys.path:
        sys.path.insert(0, str(here))
    for f in sorted(here.glob("test_*.py")):
        if "TRAINER_REGISTRY.register" in f.read_text():
            importlib.import_module(f.stem)


def pytest_configure(config) -> None:
    _import_trainer_test_modules()


def plugin_trainers() -> dict:
    """Every registered ``PromptTrainer`` (the project's, and those test modules register): name -> class."""
    import promptot.engine as engine
    import trainers  # noqa: F401  (registers the project's trainers)
    from promptot.trainer import PromptTrainer

    reg = engine.TRAINER_REGISTRY
    return {n: reg.get(n) for n in sorted(reg.registered_names())
            if isinstance(reg.get(n), type) and issubclass(reg.get(n), PromptTrainer)}


def trainer_test_config(cls) -> Path:
    """The config a registry test runs a trainer with: ``<config_dir>/miniclip.yaml``, the trainer's mini-CLIP config
    (it fits the tiny test CLIP too: 32 px, 2 layers per tower)."""
    return ROOT / cls.configs_dir() / "miniclip.yaml"


def build_registered(name: str, toy_root: Path, out_dir: Path, clip_path: str, extra=(), epochs: int = 1):
    """Build registered trainer ``name`` on the toy image folder with the tiny CLIP, fp32, ``epochs`` epochs."""
    import promptot.engine as engine
    import train

    cls = plugin_trainers()[name]
    node = cls.config_class.CFG_NODE
    prec = ["TRAINER." + node + ".PREC", "fp32"] if "PREC" in cls.config_class.__dataclass_fields__ else []
    argv = base_args(toy_root, out_dir, name, str(trainer_test_config(cls)), clip_path) + \
        tiny_opts(clip_path, epochs=epochs) + prec + list(extra)
    cfg = train.setup_cfg(train.build_parser().parse_args(argv))
    engine.set_random_seed(cfg.SEED)
    return engine.build_trainer(cfg)
