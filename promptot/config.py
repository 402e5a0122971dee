"""Project config: the keys promptot adds to the Dassl tree, and typed per-trainer configs.

Each trainer declares its ``TRAINER.<NODE>`` keys once, as a dataclass with
defaults (:func:`register_trainer_config`); :func:`extend_cfg` turns every
registered dataclass into a yacs node (so yaml files and ``KEY VALUE`` opts are
checked against it) and :func:`resolve` turns the merged node back into a typed,
validated object inside the trainer.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Dict, Iterable, Optional, Type, TypeVar

from yacs.config import CfgNode as CN

from .dassl_nodes import DASSL_TRAINER_DEFAULTS
from .errors import ConfigError

T = TypeVar("T")
_TRAINER_CONFIGS: Dict[str, type] = {}


def register_trainer_config(node: str):
    """Class decorator: declare ``TRAINER.<node>`` from a dataclass's fields and defaults."""

    def deco(cls: Type[T]) -> Type[T]:
        if not dataclasses.is_dataclass(cls):
            cls = dataclasses.dataclass(cls)
        prev = _TRAINER_CONFIGS.get(node)
        if prev is not None and prev.__qualname__ != cls.__qualname__:
            raise KeyError(f"TRAINER.{node} is already declared by {prev.__qualname__}")
        _TRAINER_CONFIGS[node] = cls
        cls.CFG_NODE = node
        return cls

    return deco


def _to_yacs(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    return value


def extend_cfg(cfg: CN) -> CN:
    """Add the project's keys to a default config (before any yaml is merged)."""
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"  # all | base | new (CoOp's extend_cfg)
    cfg.DATASET.SKIP_CORRUPT = False  # opt-in: skip unreadable images and count them
    cfg.DATASET.STRICT_SHOTS = False  # opt-in: a class with fewer images than NUM_SHOTS is an error
    cfg.DATASET.FOLDER = ""  # ImageFolder: sub-folder of ROOT holding the user's images
    cfg.MODEL.BACKBONE.PATH = ""  # local CLIP weights (OpenAI .pt archive or state dict)
    cfg.MODEL.TEXT_CHUNK = 0  # >0: encode prompts this many at a time, recomputed in backward (memory flat in C)
    cfg.TRAIN.NONFINITE = "stop"  # stop | skip: what a NaN/Inf loss or tensor does to a training step
    cfg.TRAIN.DETERMINISTIC = False  # opt-in: deterministic kernels, bit-identical reruns of a seed
    for node, cls in sorted(_TRAINER_CONFIGS.items()):
        sub = CN()
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = f.default_factory()  # type: ignore[misc]
            else:
                raise TypeError(f"{cls.__name__}.{f.name} needs a default to be a config key")
            setattr(sub, f.name, _to_yacs(default))
        setattr(cfg.TRAINER, node, sub)
    return cfg


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def resolve(cfg: CN, cls: Type[T]) -> T:
    """Build the typed, validated config ``cls`` from ``cfg.TRAINER.<cls.CFG_NODE>``; a value of the wrong type
    raises a :class:`ConfigError` naming the key."""
    node = getattr(cfg.TRAINER, cls.CFG_NODE)  # type: ignore[attr-defined]
    values = {}
    for f in dataclasses.fields(cls):
        v = node[f.name]
        allowed = _TYPES.get(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""))
        if allowed and (not isinstance(v, allowed) or (bool not in allowed and isinstance(v, bool))):
            raise ConfigError(f"TRAINER.{cls.CFG_NODE}.{f.name} must be a {f.type}, got {v!r}")  # type: ignore
        values[f.name] = v
    return cls(**values)  # type: ignore[arg-type]


def validate_config(cfg: CN, trainer_cls: Optional[type] = None) -> None:
    """Check a merged config before any data or model is built; every problem is a :class:`ConfigError` naming the
    key and the allowed values. Checks the trainer's typed config (``trainer_cls.config_class``) and the engine keys
    promptot relies on."""
    from .engine import ENGINE
    from .engine.optim import AVAI_OPTIMS, AVAI_SCHEDS

    if trainer_cls is not None and getattr(trainer_cls, "config_class", None) is not None:
        resolve(cfg, trainer_cls.config_class)
    check_choice("OPTIM.NAME", cfg.OPTIM.NAME, AVAI_OPTIMS)
    check_choice("OPTIM.LR_SCHEDULER", cfg.OPTIM.LR_SCHEDULER, AVAI_SCHEDS)
    check_choice("OPTIM.WARMUP_TYPE", cfg.OPTIM.WARMUP_TYPE, ("constant", "linear"))
    check_choice("DATASET.SUBSAMPLE_CLASSES", cfg.DATASET.SUBSAMPLE_CLASSES, ("all", "base", "new"))
    check_choice("TRAIN.NONFINITE", cfg.TRAIN.NONFINITE, ("stop", "skip"))
    check_choice("TEST.FINAL_MODEL", cfg.TEST.FINAL_MODEL, ("last_step", "best_val"))
    for key, value, low in (("OPTIM.MAX_EPOCH", cfg.OPTIM.MAX_EPOCH, 1), ("OPTIM.LR", cfg.OPTIM.LR, 0),
                            ("DATALOADER.TRAIN_X.BATCH_SIZE", cfg.DATALOADER.TRAIN_X.BATCH_SIZE, 1),
                            ("DATALOADER.TEST.BATCH_SIZE", cfg.DATALOADER.TEST.BATCH_SIZE, 1),
                            ("DATALOADER.NUM_WORKERS", cfg.DATALOADER.NUM_WORKERS, 0),
                            ("OPTIM.WARMUP_EPOCH", cfg.OPTIM.WARMUP_EPOCH, -1),
                            ("MODEL.TEXT_CHUNK", cfg.MODEL.TEXT_CHUNK, 0)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{key} must be a number >= {low}, got {value!r}")
    if isinstance(cfg.OPTIM.LR, (int, float)) and cfg.OPTIM.LR <= 0:
        raise ConfigError(f"OPTIM.LR must be > 0, got {cfg.OPTIM.LR}")
    size = tuple(cfg.INPUT.SIZE)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ConfigError(f"INPUT.SIZE must be two positive integers, e.g. (224, 224), got {cfg.INPUT.SIZE!r}")
    if ENGINE == "builtin":
        from .engine.data import AVAI_CHOICES

        for tf in cfg.INPUT.TRANSFORMS:
            check_choice("INPUT.TRANSFORMS entries", tf, AVAI_CHOICES)
    if not cfg.MODEL.BACKBONE.PATH:
        from .clip.loader import expected_image_size
        from .miniclip import register as register_miniclip

        register_miniclip()

        want = expected_image_size(cfg.MODEL.BACKBONE.NAME)
        if want is not None and size[0] != want:
            raise ConfigError(f"INPUT.SIZE is {size} but {cfg.MODEL.BACKBONE.NAME} expects {want}x{want} images; set "
                              f"INPUT.SIZE ({want}, {want}).")


#: Keys that say where a run reads and writes or how it is executed, not what it computes: the same job run on
#: another machine (data root), into another folder, on CPU or GPU, with other loader workers, log or
#: checkpoint frequency, deterministic kernels or chunked text encoding (equal outputs) has the same hash (so a
#: crashed job may be resumed with ``TRAIN.CHECKPOINT_FREQ 1``, or with ``MODEL.TEXT_CHUNK`` to fit in memory).
RUNTIME_KEYS = ("OUTPUT_DIR", "RESUME", "DATASET.ROOT", "VERBOSE", "USE_CUDA", "DATALOADER.NUM_WORKERS",
                "TRAIN.PRINT_FREQ", "TRAIN.CHECKPOINT_FREQ", "TRAIN.DETERMINISTIC", "MODEL.TEXT_CHUNK")

#: Trainers whose ``TRAINER.<node>`` is not their upper-cased name.
TRAINER_NODE_ALIASES = {"ZEROSHOTCLIP": "ZSCLIP", "ZEROSHOTCLIP2": "ZSCLIP"}


def _plain(cfg: Any) -> Any:
    """JSON-able copy of a config (tuples and lists alike become lists)."""
    return json.loads(json.dumps(cfg, default=list))


def owned_config(cfg: Any, ignore: Iterable[str] = RUNTIME_KEYS) -> Dict[str, Any]:
    """The part of a resolved config that defines a job, as a plain dict: every key except ``ignore`` and except
    the ``TRAINER`` sub-nodes of other trainers (Dassl's built-in ones, which only real Dassl declares, and the
    project's other methods, which a new method adds). Identical whichever engine built the config."""
    d = _plain(cfg)
    for key in ignore:
        *path, last = key.split(".")
        parent = d
        for part in path:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.pop(last, None)
    trainer = d.get("TRAINER")
    if isinstance(trainer, dict):
        name = str(trainer.get("NAME") or "").upper()
        ours = [n for n, v in trainer.items() if isinstance(v, dict) and n not in DASSL_TRAINER_DEFAULTS]
        own = TRAINER_NODE_ALIASES.get(name, name)
        # A trainer whose node cannot be told from its name keeps every project node (a hash that changes too
        # often is safe; one that ignores the method's own keys is not).
        keep = {own} if own in ours else set(ours)
        d["TRAINER"] = {n: v for n, v in trainer.items() if not isinstance(v, dict) or n in keep}
    return d


def config_hash(cfg: Any, ignore_seed: bool = False) -> str:
    """Short hash identifying a job: :func:`owned_config` (the same under Dassl and the built-in engine, blind to
    output folders, data root and other runtime keys). ``ignore_seed`` gives the hash of the job's group, the
    runs that differ only by seed (see :func:`group_hash`)."""
    ignore = RUNTIME_KEYS + (("SEED",) if ignore_seed else ())
    return hashlib.sha256(json.dumps(owned_config(cfg, ignore), sort_keys=True).encode()).hexdigest()[:12]


def group_hash(cfg: Any) -> str:
    """Hash shared by the runs of one experiment that differ only by seed (what results are averaged over)."""
    return config_hash(cfg, ignore_seed=True)


def config_from_yaml(path: str) -> CN:
    """A resolved config as written to ``OUTPUT_DIR/config.yaml`` (by either engine), for hashing."""
    with open(path) as f:
        return CN.load_cfg(f)


def check_choice(name: str, value: Any, choices) -> None:
    """Raise a :class:`ConfigError` naming the config key, the bad value and the allowed ones."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")


# --------------------------------------------------------------------------------------------- shared bases
class TrainerConfig:
    """Base of the typed trainer configs: ``key("N_CTX")`` gives the full key name for messages."""

    CFG_NODE = "?"

    def key(self, name: str) -> str:
        return f"TRAINER.{type(self).CFG_NODE}.{name}"

    def check_positive(self, *names: str, minimum: int = 1) -> None:
        """Raise a :class:`ConfigError` for the first of ``names`` below ``minimum``."""
        for n in names:
            if getattr(self, n) < minimum:
                raise ConfigError(f"{self.key(n)} must be >= {minimum}, got {getattr(self, n)}")

    def check_first_words_context(self, n_key: str, init_key: str = "CTX_INIT") -> None:
        """MaPLe-style context (the first ``n`` words of the init are learnable, the rest stay fixed words): ``n``
        must be >= 1 without an init and at most the init's word count with one."""
        n, init = getattr(self, n_key), getattr(self, init_key).replace("_", " ").strip()
        words = len(init.split()) if init else 0
        if not init and n < 1:
            raise ConfigError(f"{self.key(n_key)} must be >= 1 when {self.key(init_key)} is empty, got {n}")
        if n < 0 or n > words > 0:
            raise ConfigError(
                f"{self.key(n_key)} must be between 0 and the {words} words of {self.key(init_key)} {init!r} (the "
                f"first {n_key} words are learnable, the rest stay fixed), got {n}; for a random context of {n} tokens "
                f"set {self.key(init_key)} \"\" (the reference code does that silently when {n_key} > 4)")


@dataclasses.dataclass
class PrecisionConfig(TrainerConfig):
    """``PREC``: fp16 | fp32 | amp (see :mod:`promptot.precision`), validated here for every trainer."""

    PREC: str = "fp16"

    def __post_init__(self) -> None:
        from .precision import check_precision

        check_precision(self.PREC, self.key("PREC"))


@dataclasses.dataclass
class HandTemplateConfig(TrainerConfig):
    """Hand-crafted class prompts of a method's frozen teacher or guidance: ``TEMPLATES`` names a table of
    :mod:`promptot.templates` (per-dataset templates), ``TEMPLATE`` (if set) is used for every dataset."""

    TEMPLATES: str = "coop"
    TEMPLATE: str = ""  # "" = the dataset's template from TEMPLATES

    def check_templates(self) -> None:
        from .templates import TEMPLATE_TABLES

        check_choice(self.key("TEMPLATES"), self.TEMPLATES, sorted(TEMPLATE_TABLES))


def check_context(config: TrainerConfig) -> None:
    """Without ``CTX_INIT`` the context is ``N_CTX`` random vectors, so ``N_CTX`` must be >= 1 (with an init, the
    init's words set the length, as in the reference)."""
    if not str(getattr(config, "CTX_INIT", "")).strip():
        config.check_positive("N_CTX")


@dataclasses.dataclass
class SinkhornConfig(PrecisionConfig):
    """Sinkhorn options shared by the OT trainers, and their one conversion to the head's config.

    ``MAX_ITER`` iterations at most; ``STOP`` marginal | reference | fixed; ``DOMAIN`` kernel | log;
    ``GRAD`` detach | envelope | autodiff (see :func:`promptot.ot.sinkhorn`).
    """

    MAX_ITER: int = 100
    STOP: str = "marginal"
    DOMAIN: str = "kernel"
    GRAD: str = "detach"

    def __post_init__(self) -> None:
        super().__post_init__()
        from .ot import DOMAINS, GRADS, STOPS

        check_choice(self.key("STOP"), self.STOP, STOPS)
        check_choice(self.key("DOMAIN"), self.DOMAIN, DOMAINS)
        check_choice(self.key("GRAD"), self.GRAD, GRADS)
        self.check_positive("MAX_ITER")

    def ot_head_config(self, **fields: Any):
        """:class:`promptot.ot.OTHeadConfig` with these Sinkhorn options plus the method's own ``fields``."""
        from .ot import OTHeadConfig

        return OTHeadConfig(max_iter=self.MAX_ITER, stop=self.STOP, domain=self.DOMAIN, grad=self.GRAD, **fields)
