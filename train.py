"""CoOp-family command line: ``python train.py --root DATA --trainer CoOp --dataset-config-file ...``.

Merge order (later wins): engine defaults -> promptot keys and every trainer's
``TRAINER.<NODE>`` -> dataset yaml -> method yaml -> command-line flags -> ``KEY VALUE`` opts.
Unlike the reference script, ``--seed 0`` is a real seed.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import os.path as osp
import sys
import time

from promptot.errors import UserError
from promptot.fileio import atomic_write_text

# torch, the engine and the trainers are imported by load_plugins(), after the arguments are parsed, so that
# `train.py --help` and argument errors answer at once.
engine = None


def load_plugins():
    """Import the engine (real Dassl or built-in), the dataset classes and the trainers (registering them)."""
    global engine
    import promptot.engine as _engine

    import datasets  # noqa: F401  (registers the dataset classes)
    import trainers  # noqa: F401  (registers the trainer classes)

    engine = _engine
    return _engine


def print_args(args, cfg) -> None:
    print("***************")
    print("** Arguments **")
    print("***************")
    for key in sorted(args.__dict__):
        print(f"{key}: {args.__dict__[key]}")
    print("************")
    print("** Config **")
    print("************")
    print(cfg)


def reset_cfg(cfg, args) -> None:
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed is not None:
        cfg.SEED = args.seed
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head


def _merge_file(cfg, path: str, what: str) -> None:
    if not osp.isfile(path):
        raise UserError(f"{what} {path!r} does not exist (paths are relative to the current directory; "
                        f"run from the repository root or give an absolute path).")
    try:
        cfg.merge_from_file(path)
    except KeyError as e:
        raise UserError(f"{what} {path}: {e.args[0] if e.args else e}. The key is not declared; check its "
                        "spelling, and that the trainer that declares it is imported.") from e


def setup_cfg(args):
    load_plugins()
    from promptot.config import extend_cfg

    flags = [o for o in args.opts if o.startswith("--")]
    if flags:
        raise UserError(f"Command-line flags must come before the KEY VALUE overrides, but {flags[0]} comes after "
                        f"them: move {' '.join(flags)} before the first KEY (e.g. `train.py --output-dir OUT ... "
                        "DATASET.NUM_SHOTS 16`).")
    cfg = engine.get_cfg_default()
    extend_cfg(cfg)
    if args.dataset_config_file:
        _merge_file(cfg, args.dataset_config_file, "--dataset-config-file")
    if args.config_file:
        _merge_file(cfg, args.config_file, "--config-file")
    reset_cfg(cfg, args)
    if len(args.opts) % 2:
        raise UserError(f"Trailing options must be KEY VALUE pairs; got an odd number: {args.opts}")
    try:
        cfg.merge_from_list(args.opts)
    except (KeyError, ValueError, AssertionError) as e:
        raise UserError(f"Bad KEY VALUE option: {e}") from e
    if not isinstance(cfg.DATASET.NAME, str):  # yacs lets any type follow a None (DATASET.NAME None DATASET.NAME 1)
        raise UserError(f"DATASET.NAME must be a dataset name, got {cfg.DATASET.NAME!r}: pass --dataset-config-file "
                        "configs/datasets/<name>.yaml or e.g. DATASET.NAME EuroSAT")
    if cfg.DATASET.NAME and cfg.DATASET.NAME not in engine.DATASET_REGISTRY.registered_names():
        # a config stem or any-case spelling of a built-in dataset ("eurosat", "fashion_mnist_shift") is accepted
        from promptot.datasets.names import UnknownDatasetError, resolve_name

        try:
            cfg.DATASET.NAME = resolve_name(cfg.DATASET.NAME)
        except UnknownDatasetError:
            pass  # main() lists the registered names, user modules included
    cfg.freeze()
    return cfg


def check_names(cfg) -> None:
    """The trainer and the dataset the config names must be registered (the trainer may also come from a
    ``TRAINER.NAME`` option, which yacs applies after ``--trainer``): a UserError that lists the registered names."""
    import promptot.datasets as promptot_datasets
    import trainers

    names = engine.TRAINER_REGISTRY.registered_names()
    if cfg.TRAINER.NAME not in names:
        from promptot.engine.registry import unknown_name_message

        plugin = sorted(n for n in names if n in trainers.__all__)
        raise UserError(unknown_name_message("trainer", cfg.TRAINER.NAME or "(none: pass --trainer)", plugin,
                                             hint="Pass one with --trainer NAME."))
    datasets_avai = engine.DATASET_REGISTRY.registered_names()
    if cfg.DATASET.NAME not in datasets_avai:
        from promptot.engine.registry import unknown_name_message

        ours = sorted(n for n in datasets_avai if n in promptot_datasets.BUILTIN_CLASSES) or sorted(datasets_avai)
        raise UserError(unknown_name_message("dataset", cfg.DATASET.NAME or "(none)", ours,
                                             hint="Pass --dataset-config-file configs/datasets/<name>.yaml, or "
                                                  "register your own class in a module under datasets/."))


def main(args) -> None:
    cfg = setup_cfg(args)
    import torch

    from promptot.config import config_hash

    check_names(cfg)
    if not cfg.DATASET.ROOT:
        raise UserError("No dataset root: pass --root DATA (the folder that holds the datasets; the Fashion-MNIST "
                        "datasets are written there on first use). It must not be left empty, so that no dataset is "
                        "built inside the current directory by accident.")
    from promptot.config import validate_config

    validate_config(cfg, engine.TRAINER_REGISTRY.get(cfg.TRAINER.NAME))  # before any data or model is built

    from promptot import distributed as ddp

    if ddp.init_from_env(use_cuda=cfg.USE_CUDA):  # launched by torchrun with several processes
        if engine.ENGINE == "dassl":
            raise UserError("Real Dassl has no distributed training: run the K processes on the built-in engine "
                            "(PROMPTOT_ENGINE=builtin torchrun ...), or one process under Dassl.")
        if not ddp.is_main():  # rank 0 prints, logs and writes; the other ranks compute and stay quiet
            sys.stdout = open(os.devnull, "w")
    from promptot.runlock import RunLock

    lock = RunLock(cfg.OUTPUT_DIR) if ddp.is_main() else contextlib.nullcontext()
    with lock:  # one writer per run directory; refuses a live owner, takes over a dead one
        try:
            run(cfg, args, torch, config_hash)
        finally:
            if ddp.is_distributed():
                torch.distributed.destroy_process_group()


def run(cfg, args, torch, config_hash) -> None:
    """The run itself, inside the output directory's lock."""
    if cfg.TRAIN.DETERMINISTIC:
        # Bit-identical reruns: deterministic kernels everywhere (cuBLAS needs its workspace setting before CUDA starts)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available() and cfg.USE_CUDA:
        torch.backends.cudnn.benchmark = True
    if cfg.SEED >= 0:
        print(f"Setting fixed seed: {cfg.SEED}")
        engine.set_random_seed(cfg.SEED)
    from promptot import distributed as ddp

    if ddp.is_main():
        engine.setup_logger(cfg.OUTPUT_DIR)
    print(f"promptot engine: {engine.ENGINE} (set PROMPTOT_ENGINE=auto|dassl|builtin to choose)")
    print_args(args, cfg)
    print("Collecting env info ...")
    print(f"** System info **\n{engine.collect_env_info()}\n")
    config_path = osp.join(cfg.OUTPUT_DIR, "config.yaml")
    if args.eval_only and osp.exists(config_path):
        # an evaluation into an existing run directory keeps that run's config (its training record)
        config_path = osp.join(cfg.OUTPUT_DIR, time.strftime("config-eval-%Y%m%d-%H%M%S.yaml"))
        print(f"{osp.join(cfg.OUTPUT_DIR, 'config.yaml')} is kept; this evaluation's config goes to {config_path}")
    config_text = f"# config_hash: {config_hash(cfg)}\n{cfg.dump()}"
    if ddp.is_main():
        atomic_write_text(config_path, config_text)

    trainer = engine.build_trainer(cfg)
    effective = getattr(trainer, "effective", {})
    if effective and ddp.is_main():
        notes = "".join(f"# effective: {k}: {v!r} ({why})\n" for k, (v, why) in effective.items())
        atomic_write_text(config_path, config_text + notes)
    if args.eval_only:
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
        trainer.test()
        return
    if not args.no_train:
        trainer.train()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=str, default="", help="path to the dataset root")
    p.add_argument("--output-dir", type=str, default="", help="output directory")
    p.add_argument("--resume", type=str, default="", help="checkpoint directory (from which the training resumes)")
    p.add_argument("--seed", type=int, default=None, help="random seed (any value >= 0, 0 included)")
    p.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    p.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    p.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    p.add_argument("--config-file", type=str, default="", help="path to the method config file")
    p.add_argument("--dataset-config-file", type=str, default="", help="path to the dataset config file")
    p.add_argument("--trainer", type=str, default="", help="name of trainer")
    p.add_argument("--backbone", type=str, default="", help="name of CNN backbone")
    p.add_argument("--head", type=str, default="", help="name of head")
    p.add_argument("--eval-only", action="store_true", help="evaluation only")
    p.add_argument("--model-dir", type=str, default="", help="load model from this directory for eval-only mode")
    p.add_argument("--load-epoch", type=int, help="load model weights at this epoch for evaluation")
    p.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    p.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="modify config options using the command-line")
    return p


if __name__ == "__main__":
    from promptot.cli import run_main

    run_main(lambda: main(build_parser().parse_args()))
