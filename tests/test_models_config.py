"""Several models in one config, and which models ``raymedic up`` serves (no Ray: a registry on disk)."""

from __future__ import annotations

import pytest

from raymedic.app.service import choose_models
from raymedic.config import parse_config
from raymedic.errors import ConfigError
from raymedic.storage import Storage
from train_jobs.registry import ModelRegistry

TWO = [{"name": "logistic", "kind": "logistic", "fallback": True}, {"name": "mlp", "kind": "mlp"}]


def test_each_model_gets_its_members_and_deployment_names():
    cfg = parse_config({"model": "synthetic", "members": TWO,
                        "models": {"cards": None, "digits": {"members": [
                            {"name": "cnn", "module": "my_models.digits:SmallCNN"},
                            {"name": "logistic", "kind": "logistic", "fallback": True}]}}})
    assert cfg.model_names == ["synthetic", "cards", "digits"]
    first, cards, digits = (cfg.for_model(n) for n in cfg.model_names)
    assert (first.model, first.models, first.deployment_of("mlp")) == ("synthetic", {}, "mlp")
    assert [m.name for m in cards.members] == ["logistic", "mlp"] and cards.deployment_of("mlp") == "cards.mlp"
    assert [m.name for m in digits.members] == ["cnn", "logistic"] and digits.fallback_member == "logistic"
    assert digits.deployment_of("cnn") == "digits.cnn"
    # a one-model config is its own model's config: nothing renamed
    alone = parse_config({"members": TWO})
    assert alone.for_model("synthetic") is alone


def test_serving_puts_the_first_name_first_and_keeps_each_models_members():
    cfg = parse_config({"model": "synthetic", "members": TWO,
                        "models": {"digits": {"members": [{"name": "cnn", "kind": "mlp", "fallback": True},
                                                          {"name": "lr", "kind": "logistic"}]}}})
    both = cfg.serving(["digits", "synthetic"])
    assert both.model_names == ["digits", "synthetic"]
    assert [m.name for m in both.members] == ["cnn", "lr"]
    assert [m.name for m in both.for_model("synthetic").members] == ["logistic", "mlp"]
    assert both.for_model("digits").deployment_of("cnn") == "cnn"
    assert both.for_model("synthetic").deployment_of("mlp") == "synthetic.mlp"


@pytest.mark.parametrize("args, fragment", [
    ({"model": "a", "models": {"a": {}}}, "list only the other models"),
    ({"model": "a", "models": {"b c": {}}}, "must match"),
    ({"model": "a", "members": [{"name": "b.x", "kind": "logistic"}, {"name": "y", "kind": "mlp"}],
      "models": {"b": {"members": [{"name": "x", "kind": "logistic"}, {"name": "z", "kind": "mlp"}]}}},
     "share the Serve deployment name(s) ['b.x']"),
    ({"model": "a", "models": {"b": {"members": [{"name": "x", "kind": "logistic"}]}}},
     "of model 'b': lower min_members"),
    ({"model": "a", "models": {"b": {"members": [{"name": "x", "kind": "logistic", "fallback": True},
                                                 {"name": "x", "kind": "mlp"}]}}}, "must be unique"),
])
def test_bad_models_sections_are_refused_with_the_fix(args, fragment):
    with pytest.raises(ConfigError) as err:
        parse_config(args)
    assert fragment in str(err.value), str(err.value)


def _champion(registry: ModelRegistry, model: str, member: str) -> None:
    info = registry.register(model, member, files={"weights.safetensors": b"x"}, metadata={"kind": "logistic"})
    registry.promote(model, member, info.version)


def test_up_serves_every_model_with_champions_for_its_members(tmp_path):
    cfg = parse_config({"model": "synthetic", "members": TWO, "storage_path": str(tmp_path)})
    registry = ModelRegistry(Storage(str(tmp_path)))
    assert choose_models(cfg, None) is cfg  # an empty registry: the config's model, to be trained
    for model in ("cards", "bikes"):
        for member in ("logistic", "mlp"):
            _champion(registry, model, member)
    _champion(registry, "digits", "cnn")  # trained with another config: not these members
    said: list[str] = []
    served = choose_models(cfg, None, said.append)
    # the config's model has no champions: the registry's models, by name
    assert served.model_names == ["bikes", "cards"]
    assert any("'digits'" in s and "models:" in s for s in said), said
    for member in ("logistic", "mlp"):
        _champion(registry, "synthetic", member)
    assert choose_models(cfg, None).model_names == ["synthetic", "bikes", "cards"]
    assert choose_models(cfg, "cards").model_names == ["cards"]
    assert choose_models(cfg, "cards, synthetic,cards").model_names == ["cards", "synthetic"]
    with pytest.raises(ConfigError, match="names no model"):
        choose_models(cfg, " , ")
