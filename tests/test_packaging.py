"""The shipped configs and the two README commands stay true (no Ray cluster needed)."""

from __future__ import annotations

import re

import yaml

from raymedic.config import load_config
from tests.conftest import REPO


def test_cluster_launcher_config_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((REPO / "ray-cluster.yaml").read_text()))
    validate_config(config)
    assert config["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"].startswith("g")


def test_default_config_is_a_valid_serve_config_and_raymedic_config():
    from ray.serve.schema import ServeDeploySchema

    serve_file = load_config(REPO / "cluster" / "raymedic.yaml")
    ServeDeploySchema.model_validate(serve_file.serve)  # what `serve deploy` checks
    assert serve_file.config.fallback_member == "logistic" and len(serve_file.config.members) >= 3


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    readme = (REPO / "README.md").read_text()
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = [ln.split("#")[0].strip() for ln in re.findall(r"```bash\n(.*?)```", setup, re.S)[0].splitlines()]
    assert [c for c in commands if c] == ["make demo", "make test"]
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_config_mistakes_are_refused_with_the_fix():
    import pytest

    from raymedic.config import parse_config
    from raymedic.errors import ConfigError

    for args, fragment in [
        ({"gateway": {"max_inflight": 100, "max_ongoing_requests": 64}}, "must be <= max_ongoing_requests"),
        ({"controller": {"min_weight": 0.4, "max_weight": 0.3}}, "controller.min_weight (0.4) must be <="),
        ({"controller": {"weights_audit_min_change": 0.3}}, "controller.weights_audit_min_change (0.3) must be <= "
                                                            "controller.weights_audit_large_change (0.2)"),
        ({"members": [{"name": "ensemble", "kind": "mlp"}], "gateway": {"min_members": 1}}, "'ensemble' names"),
        ({"data": {"missing": "drop"}}, "data.missing"),
        ({"data": {"window": 10}}, "data.window"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_config(args)
        assert fragment in str(err.value), str(err.value)


def test_the_raymedic_script_points_at_the_cli_main():
    """The installed `raymedic` command (pyproject's script) runs the CLI's main, as `python -m raymedic` does."""
    import importlib

    (target,) = re.findall(r'^raymedic = "([^"]+)"$', (REPO / "pyproject.toml").read_text(), re.M)
    module, _, name = target.partition(":")
    assert target == "raymedic.app.cli:main"
    assert callable(getattr(importlib.import_module(module), name))
    assert "from raymedic.app.cli import main" in (REPO / "raymedic" / "__main__.py").read_text()
