"""Property test: random ``KEY VALUE`` overrides, driven through the command line's config resolution and the checks
that run before any data or model is built, either resolve or fail with a clean ``UserError`` (one paragraph, exit 2
in train.py) — never another exception from deep inside."""
from __future__ import annotations

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings, strategies as st  # noqa: E402

import train  # noqa: E402
from promptot.config import validate_config  # noqa: E402
from promptot.errors import UserError  # noqa: E402

from conftest import ROOT  # noqa: E402


def _keys():
    train.load_plugins()
    from promptot.config import extend_cfg

    cfg = extend_cfg(train.engine.get_cfg_default())
    out = []

    def walk(node, prefix):
        for k, v in node.items():
            if hasattr(v, "items"):
                walk(v, prefix + k + ".")
            else:
                out.append(prefix + k)

    walk(cfg, "")
    return sorted(out)


KEYS = _keys()
TRAINERS = ["CoOp", "CoCoOp", "PLOT", "PLOTPP", "ALIGN", "ZeroshotCLIP"]
CONFIGS = {"CoOp": "CoOp/vit_b16_ep50", "CoCoOp": "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1", "PLOT": "PLOT/rn50",
           "PLOTPP": "PLOTPP/vit_b16_joint", "ALIGN": "ALIGN/vit_b16_c2_ep5_batch4_2ctx", "ZeroshotCLIP": "CoOp/vit_b16"}

values = st.one_of(
    st.integers(-3, 3000).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["True", "False", "", "''", "[]", "(224, 224)", "(0, 0)", "[1, 2]", "fp16", "amp", "fp32", "end",
                     "middle", "sgd", "nope", "cosine", "kernel", "log", "reference", "base", "new", "{}", "None",
                     "ImageNet", "eurosat", "ViT-B/16", "RN50", "a photo of a", "-1", "0", "1e-9"]),
    st.text(min_size=0, max_size=12))
# keys the checks read, weighted up so that most examples reach validation with odd values
CHECKED = [k for k in KEYS if k.startswith(("TRAINER.COOP.", "TRAINER.COCOOP.", "TRAINER.PLOT", "TRAINER.ALIGN.",
                                            "TRAINER.ZSCLIP.", "OPTIM.", "INPUT.", "DATALOADER.", "DATASET.",
                                            "TRAIN.", "TEST.", "MODEL.BACKBONE."))]
keys = st.one_of(st.sampled_from(CHECKED), st.sampled_from(CHECKED), st.sampled_from(KEYS),
                 st.sampled_from(["TRAINER.COOP.NOPE", "NOPE", "OPTIM", "TRAINER"]), st.text(min_size=1, max_size=20))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trainer=st.sampled_from(TRAINERS), overrides=st.lists(st.tuples(keys, values), max_size=4))
# cases random runs found once, kept so that every run checks them
@example(trainer="CoOp", overrides=[("DATASET.NAME", "None"), ("DATASET.NAME", "1")])
@example(trainer="CoOp", overrides=[("TRAINER.NAME", "")])
def test_random_overrides_resolve_or_fail_cleanly(trainer, overrides, tmp_path_factory):
    opts = [x for kv in overrides for x in kv]
    argv = ["--root", "/nonexistent/data", "--trainer", trainer, "--config-file",
            str(ROOT / f"configs/trainers/{CONFIGS[trainer]}.yaml"), "--dataset-config-file",
            str(ROOT / "configs/datasets/eurosat.yaml"), "--output-dir", "/nonexistent/out"] + opts
    try:
        args = train.build_parser().parse_args(argv)
    except SystemExit:
        return  # argparse itself refused (e.g. a value that looks like a flag): a usage message, not a traceback
    try:
        cfg = train.setup_cfg(args)
        train.check_names(cfg)  # as main(): TRAINER.NAME "" once reached the registry's KeyError here
        validate_config(cfg, train.engine.TRAINER_REGISTRY.get(cfg.TRAINER.NAME))
    except UserError:
        pass
