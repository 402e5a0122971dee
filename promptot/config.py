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
from typing import Any, Dict, Iterable, Type, TypeVar

from yacs.config import CfgNode as CN

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
    cfg.DATASET.FOLDER = ""  # ImageFolder: sub-folder of ROOT holding the user's images
    cfg.MODEL.BACKBONE.PATH = ""  # local CLIP weights (OpenAI .pt archive or state dict)
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


def resolve(cfg: CN, cls: Type[T]) -> T:
    """Build the typed config ``cls`` from ``cfg.TRAINER.<cls.CFG_NODE>``."""
    node = getattr(cfg.TRAINER, cls.CFG_NODE)  # type: ignore[attr-defined]
    return cls(**{f.name: node[f.name] for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


#: Sub-nodes that Dassl's own ``get_cfg_default()`` declares under ``TRAINER`` for its built-in DA/DG/SSL trainers
#: (Dassl.pytorch c61a1b5, ``dassl/config/defaults.py``; 44 keys). The built-in engine declares them too, so a
#: yaml or ``KEY VALUE`` option written for Dassl merges under both engines; no promptot trainer reads them, and
#: :func:`config_hash` leaves them out.
DASSL_TRAINER_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "MCD": {"N_STEP_F": 4},
    "MME": {"LMDA": 0.1},
    "CDAC": {"CLASS_LR_MULTI": 10, "RAMPUP_COEF": 30, "RAMPUP_ITRS": 1000, "TOPK_MATCH": 5, "P_THRESH": 0.95,
             "STRONG_TRANSFORMS": ()},
    "SE": {"EMA_ALPHA": 0.999, "CONF_THRE": 0.95, "RAMPUP": 300},
    "M3SDA": {"LMDA": 0.5, "N_STEP_F": 4},
    "DAEL": {"WEIGHT_U": 0.5, "CONF_THRE": 0.95, "STRONG_TRANSFORMS": ()},
    "CROSSGRAD": {"EPS_F": 1.0, "EPS_D": 1.0, "ALPHA_F": 0.5, "ALPHA_D": 0.5},
    "DDAIG": {"G_ARCH": "", "LMDA": 0.3, "CLAMP": False, "CLAMP_MIN": -1.0, "CLAMP_MAX": 1.0, "WARMUP": 0,
              "ALPHA": 0.5},
    "DAELDG": {"WEIGHT_U": 0.5, "CONF_THRE": 0.95, "STRONG_TRANSFORMS": ()},
    "DOMAINMIX": {"TYPE": "crossdomain", "ALPHA": 1.0, "BETA": 1.0},
    "ENTMIN": {"LMDA": 1e-3},
    "MEANTEACHER": {"WEIGHT_U": 1.0, "EMA_ALPHA": 0.999, "RAMPUP": 5},
    "MIXMATCH": {"WEIGHT_U": 100.0, "TEMP": 2.0, "MIXUP_BETA": 0.75, "RAMPUP": 20000},
    "FIXMATCH": {"WEIGHT_U": 1.0, "CONF_THRE": 0.95, "STRONG_TRANSFORMS": ()},
}

#: Keys that say where a run reads and writes or how it is executed, not what it computes: the same job run on
#: another machine (data root), into another folder, on CPU or GPU, with other loader workers, log or
#: checkpoint frequency has the same hash (so a crashed job may be resumed with ``TRAIN.CHECKPOINT_FREQ 1``).
RUNTIME_KEYS = ("OUTPUT_DIR", "RESUME", "DATASET.ROOT", "VERBOSE", "USE_CUDA", "DATALOADER.NUM_WORKERS",
                "TRAIN.PRINT_FREQ", "TRAIN.CHECKPOINT_FREQ")

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
    """Raise a ValueError naming the config key, the bad value and the allowed ones."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_ot_options(node: str, stop: str, domain: str, grad: str) -> None:
    """Validate the Sinkhorn options a trainer exposes as ``TRAINER.<node>.{STOP, DOMAIN, GRAD}``."""
    from .ot import DOMAINS, GRADS, STOPS

    check_choice(f"TRAINER.{node}.STOP", stop, STOPS)
    check_choice(f"TRAINER.{node}.DOMAIN", domain, DOMAINS)
    check_choice(f"TRAINER.{node}.GRAD", grad, GRADS)
