"""The engine reproduces Dassl's observable semantics (docs/dassl.md)."""
from __future__ import annotations

import random

import pytest
import torch

import promptot.engine as engine
from promptot.config import extend_cfg
from promptot.engine.optim import WarmupLR
from promptot.engine.utils import MetricMeter, save_checkpoint, setup_logger

import trainers  # noqa: F401  (declares TRAINER.COOP etc.)


def _cfg(**optim):
    cfg = engine.get_cfg_default()
    extend_cfg(cfg)
    for k, v in optim.items():
        setattr(cfg.OPTIM, k, v)
    return cfg


def _lr_trace(cfg, n):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = engine.build_optimizer([p], cfg.OPTIM)
    sched = engine.build_lr_scheduler(opt, cfg.OPTIM)
    trace = []
    for _ in range(n):
        trace.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return trace, opt, sched


def test_lr_trace_matches_dassl_observation():
    # docs/dassl.md#optim: MAX_EPOCH 3, constant warmup 1 epoch at 1e-5, LR 2e-3 -> 1e-5, 2e-3, 1.5e-3
    cfg = _cfg(NAME="sgd", LR=2e-3, MAX_EPOCH=3, LR_SCHEDULER="cosine", WARMUP_EPOCH=1,
               WARMUP_TYPE="constant", WARMUP_CONS_LR=1e-5)
    trace, _, _ = _lr_trace(cfg, 3)
    assert trace == pytest.approx([1e-5, 2e-3, 1.5e-3], rel=1e-9)


def test_cosine_formula_after_warmup_never_reaches_zero():
    E, W, lr = 10, 1, 0.002
    cfg = _cfg(NAME="sgd", LR=lr, MAX_EPOCH=E, LR_SCHEDULER="cosine", WARMUP_EPOCH=W, WARMUP_TYPE="constant")
    trace, _, _ = _lr_trace(cfg, E)
    import math
    expected = [1e-5] + [lr * 0.5 * (1 + math.cos(math.pi * (e - W) / E)) for e in range(W, E)]
    assert trace == pytest.approx(expected, rel=1e-9)
    assert trace[-1] > 0


def test_linear_warmup_and_no_recount():
    cfg = _cfg(NAME="sgd", LR=0.1, MAX_EPOCH=6, LR_SCHEDULER="single_step", STEPSIZE=(3,), WARMUP_EPOCH=2,
               WARMUP_TYPE="linear", WARMUP_MIN_LR=1e-4)
    trace, _, _ = _lr_trace(cfg, 6)
    # linear: min_lr at 0, base*1/2 at 1, then the StepLR successor counting from 0 (step 3 -> x0.1)
    assert trace == pytest.approx([1e-4, 0.05, 0.1, 0.1, 0.1, 0.01], rel=1e-9)
    cfg.OPTIM.WARMUP_RECOUNT = False
    trace2, _, _ = _lr_trace(cfg, 6)
    assert trace2[2] == pytest.approx(0.1) and trace2 != trace


def test_warmup_state_roundtrips_with_weights_only(tmp_path):
    cfg = _cfg(NAME="sgd", LR=2e-3, MAX_EPOCH=5, LR_SCHEDULER="cosine", WARMUP_EPOCH=1, WARMUP_TYPE="constant")
    trace, opt, sched = _lr_trace(cfg, 3)
    path = tmp_path / "s.pt"
    torch.save({"scheduler": sched.state_dict(), "optimizer": opt.state_dict()}, path)
    state = torch.load(path, weights_only=True)  # no pickled scheduler objects (docs/dassl.md#shims, 2)
    p = torch.nn.Parameter(torch.zeros(1))
    opt2 = engine.build_optimizer([p], cfg.OPTIM)
    sched2 = engine.build_lr_scheduler(opt2, cfg.OPTIM)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    full, _, _ = _lr_trace(cfg, 5)
    rest = []
    for _ in range(2):
        rest.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert isinstance(sched2, WarmupLR)
    assert rest == pytest.approx(full[3:5], rel=1e-9)


def test_optimizer_defaults_are_dassls():
    cfg = _cfg(NAME="sgd", LR=0.002)
    opt = engine.build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg.OPTIM)
    g = opt.param_groups[0]
    assert (g["momentum"], g["weight_decay"], g["dampening"], g["nesterov"]) == (0.9, 5e-4, 0, False)
    with pytest.raises(ValueError, match="OPTIM.NAME"):
        engine.build_optimizer([torch.nn.Parameter(torch.zeros(1))], _cfg(NAME="lion").OPTIM)


def _datums(tmp_path, labels):
    f = tmp_path / "x.png"
    f.write_bytes(b"")
    return [engine.Datum(impath=str(f), label=l, classname=str(l)) for l in labels]


def test_fewshot_draw_is_dassls(tmp_path):
    items = _datums(tmp_path, [i % 3 for i in range(30)])
    ds = engine.DatasetBase(train_x=items, val=items, test=items)
    random.seed(7)
    got = ds.generate_fewshot_dataset(items, num_shots=4)
    # Hand transcription of Dassl's draw: group by label in input order, random.sample per group.
    random.seed(7)
    groups = {}
    for it in items:
        groups.setdefault(it.label, []).append(it)
    want = [x for lab in groups for x in random.sample(groups[lab], 4)]
    assert [id(x) for x in got] == [id(x) for x in want]
    assert ds.generate_fewshot_dataset(items, num_shots=-1) is items
    few = ds.generate_fewshot_dataset(items[:4], num_shots=3)  # classes with fewer items keep them all
    assert sorted(x.label for x in few) == [0, 0, 1, 2]


def test_datasetbase_classnames_from_train_x(tmp_path):
    items = _datums(tmp_path, [2, 0, 1, 0])
    ds = engine.DatasetBase(train_x=items, test=items[:1])
    assert ds.num_classes == 3 and ds.classnames == ["0", "1", "2"] and ds.lab2cname[2] == "2"
    with pytest.raises(FileNotFoundError, match="promptot.datasets check"):
        engine.Datum(impath=str(tmp_path / "missing.jpg"))


def test_registry_duplicate_and_unknown():
    reg = engine.Registry("X") if hasattr(engine, "Registry") else None
    if reg is None:
        pytest.skip("real Dassl registry")

    @reg.register()
    class Foo:  # noqa: D401
        pass

    with pytest.raises(KeyError):
        reg.register(Foo)
    with pytest.raises(KeyError, match=r"Did you mean .*Foo.*Registered names: Foo"):
        reg.get("Fo")


def test_evaluator_prints_dassl_block(capsys):
    cfg = _cfg()
    ev = engine.build_evaluator(cfg, lab2cname={0: "a", 1: "b"})
    ev.process(torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0]]), torch.tensor([0, 0, 1]))
    res = ev.evaluate()
    out = capsys.readouterr().out
    assert "=> result\n* total: 3\n* correct: 1\n* accuracy: 33.3%\n* error: 66.7%\n* macro_f1:" in out
    assert res["accuracy"] == pytest.approx(100 / 3)
    assert engine.compute_accuracy(torch.tensor([[2.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 0]))[0].item() == 50.0


def test_config_rejects_unknown_keys_and_merges_types():
    cfg = _cfg()
    with pytest.raises((KeyError, AssertionError), match="NO_SUCH_KEY"):  # yacs: AssertionError for opts
        cfg.merge_from_list(["OPTIM.NO_SUCH_KEY", "1"])
    cfg.merge_from_list(["INPUT.SIZE", "(32, 32)", "DATASET.SUBSAMPLE_CLASSES", "base"])
    assert cfg.INPUT.SIZE == (32, 32) and cfg.DATASET.SUBSAMPLE_CLASSES == "base"
    assert cfg.TRAINER.COOP.N_CTX == 16 and cfg.TRAINER.COOP.PREC == "fp16"


def test_log_file_never_overwritten(tmp_path):
    import sys

    saved = sys.stdout
    try:
        p1 = setup_logger(str(tmp_path))
        print("first")
        p2 = setup_logger(str(tmp_path))
        print("second")
    finally:
        sys.stdout.close()
        sys.stdout = saved
    assert p1.endswith("log.txt") and p2.startswith(p1 + "-")
    assert "first" in open(p1).read() and "second" in open(p2).read()


def test_checkpoint_layout(tmp_path):
    state = {"state_dict": {"module.ctx": torch.ones(2)}, "epoch": 3, "optimizer": None, "scheduler": None,
             "val_result": None}
    save_checkpoint(state, str(tmp_path / "prompt_learner"))
    files = sorted(p.name for p in (tmp_path / "prompt_learner").iterdir())
    assert files == ["checkpoint", "model.pth.tar-3"]
    assert (tmp_path / "prompt_learner" / "checkpoint").read_text() == "model.pth.tar-3\n"
    ck = engine.load_checkpoint(str(tmp_path / "prompt_learner" / "model.pth.tar-3"))
    assert list(ck["state_dict"]) == ["ctx"] and ck["epoch"] == 3


def test_corrupt_checkpoint_error_names_file(tmp_path):
    bad = tmp_path / "model.pth.tar-1"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="truncated or corrupt"):
        engine.load_checkpoint(str(bad))


def test_metric_meter_format():
    m = MetricMeter()
    m.update({"loss": 1.0, "acc": 50.0})
    m.update({"loss": 3.0, "acc": 100.0})
    assert str(m) == "loss 3.0000 (2.0000) acc 100.0000 (75.0000)"
