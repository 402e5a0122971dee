"""A config hash identifies a job whatever the engine (issue 14.8): Dassl's own trainer nodes, other methods'
nodes, output folders and runtime keys do not enter it; the job's own keys and its seed do."""
from __future__ import annotations

import pytest
from yacs.config import CfgNode as CN

import promptot.engine as engine
from promptot.config import DASSL_TRAINER_DEFAULTS, config_from_yaml, config_hash, extend_cfg, group_hash

import trainers  # noqa: F401  (declares TRAINER.COOP etc.)


def _cfg(*opts: str) -> CN:
    cfg = engine.get_cfg_default()
    extend_cfg(cfg)
    cfg.merge_from_list(["TRAINER.NAME", "CoOp", "DATASET.NAME", "DescribableTextures", "SEED", "1",
                         "OUTPUT_DIR", "output/a"] + list(opts))
    return cfg


def _as_under_real_dassl(cfg: CN) -> CN:
    """The same job's tree as real Dassl builds it: Dassl's 14 trainer nodes (44 keys) present."""
    cfg = cfg.clone()
    for node, keys in DASSL_TRAINER_DEFAULTS.items():
        if node not in cfg.TRAINER:
            setattr(cfg.TRAINER, node, CN(dict(keys)))
    return cfg


def _without_dassl_nodes(cfg: CN) -> CN:
    cfg = cfg.clone()
    for node in DASSL_TRAINER_DEFAULTS:
        cfg.TRAINER.pop(node, None)
    return cfg


def test_dassl_tree_has_44_extra_keys_and_builtin_declares_them():
    assert sum(len(v) for v in DASSL_TRAINER_DEFAULTS.values()) == 44
    cfg = engine.get_cfg_default()
    # A Dassl-only option now merges under the built-in engine too (it raised KeyError before).
    cfg.merge_from_list(["TRAINER.FIXMATCH.WEIGHT_U", "2.0"])
    assert cfg.TRAINER.FIXMATCH.WEIGHT_U == 2.0


def test_hash_is_the_same_under_both_engines():
    cfg = _cfg()
    h = config_hash(cfg)
    assert config_hash(_as_under_real_dassl(cfg)) == h
    assert config_hash(_without_dassl_nodes(cfg)) == h
    dassl = _as_under_real_dassl(cfg)
    dassl.TRAINER.FIXMATCH.WEIGHT_U = 2.0  # a Dassl trainer's key no promptot trainer reads
    assert config_hash(dassl) == h


def test_hash_ignores_other_methods_and_runtime_keys_but_not_the_job():
    cfg = _cfg()
    h, g = config_hash(cfg), group_hash(cfg)
    other = cfg.clone()
    other.TRAINER.MAPLE = CN({"N_CTX": 2})  # a method added later must not change existing hashes
    other.TRAINER.COCOOP.N_CTX = 8  # another method's key
    assert config_hash(other) == h
    moved = _cfg("OUTPUT_DIR", "elsewhere", "DATASET.ROOT", "/mnt/data", "TRAIN.CHECKPOINT_FREQ", "1",
                 "DATALOADER.NUM_WORKERS", "0", "USE_CUDA", "False", "TRAIN.PRINT_FREQ", "1")
    assert config_hash(moved) == h
    assert config_hash(_cfg("TRAINER.COOP.N_CTX", "4")) != h  # the method's own key
    assert config_hash(_cfg("OPTIM.MAX_EPOCH", "3")) != h
    seed2 = _cfg("SEED", "2")
    assert config_hash(seed2) != h and group_hash(seed2) == g  # the seed is part of the job, not of the group


def test_zero_shot_trainers_own_the_zsclip_node():
    zs = _cfg("TRAINER.NAME", "ZeroshotCLIP")
    assert config_hash(_cfg("TRAINER.NAME", "ZeroshotCLIP", "TRAINER.ZSCLIP.PREC", "fp32")) != config_hash(zs)
    assert config_hash(_cfg("TRAINER.NAME", "ZeroshotCLIP", "TRAINER.COOP.N_CTX", "4")) == config_hash(zs)


def test_hash_from_a_written_config_yaml(tmp_path):
    cfg = _as_under_real_dassl(_cfg("TRAINER.COOP.N_CTX", "4"))
    path = tmp_path / "config.yaml"
    path.write_text("# config_hash: whatever\n" + cfg.dump())
    assert config_hash(config_from_yaml(str(path))) == config_hash(_cfg("TRAINER.COOP.N_CTX", "4"))


@pytest.mark.parametrize("name", ["CoOp", "Unknown"])
def test_unknown_trainer_keeps_every_project_node(name):
    # A trainer whose node cannot be told from its name: every project node counts (never too blind).
    base = _cfg("TRAINER.NAME", name)
    changed = _cfg("TRAINER.NAME", name, "TRAINER.COCOOP.N_CTX", "8")
    assert (config_hash(base) == config_hash(changed)) == (name == "CoOp")
