"""Every registered trainer — the project's and any a test module registers — gets the same checks, with no
per-trainer test code: it has a mini-CLIP config, trains one step with a finite loss and gradients exactly on its
learnable parameters, writes checkpoints that hold exactly those parameters, and a checkpoint reloaded into a
fresh trainer gives the same evaluation logits."""
from __future__ import annotations

import pytest
import torch

from conftest import build_registered, check_one_training_step, plugin_trainers, trainer_test_config

NAMES = list(plugin_trainers())
TRAINING = [n for n in NAMES if plugin_trainers()[n].trains]


def test_registry_holds_the_project_trainers():
    assert {"ZeroshotCLIP", "ZeroshotCLIP2", "CoOp", "CoCoOp", "PLOT", "PLOTPP", "ALIGN", "MaPLe", "IVLP", "VPT",
            "PromptSRC"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_trainer_declares_config_and_has_a_miniclip_config(name):
    cls = plugin_trainers()[name]
    assert cls.config_class is not None and hasattr(cls.config_class, "CFG_NODE"), \
        f"{name}: set config_class to the @register_trainer_config dataclass"
    assert trainer_test_config(cls).is_file(), f"{name}: add {trainer_test_config(cls)} (the mini-CLIP config)"


@pytest.mark.parametrize("name", TRAINING)
def test_one_step_gradients_exactly_on_learnables(name, toy_root, tmp_path, tiny_vit_path):
    check_one_training_step(build_registered(name, toy_root, tmp_path / "out", tiny_vit_path))


@pytest.mark.parametrize("name", TRAINING)
def test_checkpoint_holds_learnables_and_reloads_to_same_logits(name, toy_root, tmp_path, tiny_vit_path):
    tr = build_registered(name, toy_root, tmp_path / "out", tiny_vit_path)
    check_one_training_step(tr)  # move the prompts away from their init
    tr.save_model(0, str(tmp_path / "ck"))
    learn = {id(p) for _, p in tr.learnable_parameters()}
    for reg in tr.get_model_names():
        ck = torch.load(tmp_path / "ck" / reg / "model.pth.tar-1", weights_only=False)
        params = {k for k, p in tr._models[reg].named_parameters() if id(p) in learn}
        assert set(ck["state_dict"]) == params, f"{reg}: the checkpoint must hold exactly the learnable parameters"
        assert ck["meta"]["method"] == name and ck["meta"]["classnames"] == tr.classnames
    images = next(iter(tr.test_loader))["img"]
    tr.set_model_mode("eval")
    with torch.no_grad():
        expected = tr.model_inference(images)
    fresh = build_registered(name, toy_root, tmp_path / "fresh", tiny_vit_path)
    fresh.set_model_mode("eval")
    with torch.no_grad():
        before = fresh.model_inference(images)
    fresh.load_model(str(tmp_path / "ck"), epoch=1)
    with torch.no_grad():
        after = fresh.model_inference(images)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, expected, atol=1e-4), "the reload check must depend on the loaded values"


@pytest.mark.parametrize("name", [n for n in NAMES if n not in TRAINING])
def test_eval_only_trainers_evaluate(name, toy_root, tmp_path, tiny_vit_path):
    tr = build_registered(name, toy_root, tmp_path / "out", tiny_vit_path)
    assert not [p for p in tr.model.parameters() if p.requires_grad] or tr.learnable_parameters() == []
    acc = tr.test()
    assert 0.0 <= acc <= 100.0
