"""The config schema: defaults equal configs/demo.yaml, bad keys and types are named with their file."""
from pathlib import Path

import pytest

from orchestrator.config import Config, ConfigError, load, seed_source
from trainer.constants import read_constants

REPO = Path(__file__).resolve().parents[1]


def test_builtin_default_is_the_demo_yaml():
    assert load(REPO / "configs" / "demo.yaml").to_dict() == load(None).to_dict()


@pytest.mark.parametrize("name", ["demo.yaml", "h100.yaml", "cluster.yaml"])
def test_shipped_configs_load(name):
    cfg = load(REPO / "configs" / name)
    assert cfg.source.endswith(name)


def test_cluster_archive_is_outside_the_working_dir():
    cfg = load(REPO / "configs" / "cluster.yaml")
    assert Path(cfg.archive).is_absolute()


def write(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "population:\n  sise: 3\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert "population.sise" in str(err.value) and str(path) in str(err.value)


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"budget\.seconds.*float"):
        load(write(tmp_path, "budget:\n  seconds: five\n"))
    with pytest.raises(ConfigError, match=r"population\.size.*int"):
        load(write(tmp_path, "population:\n  size: 2.5\n"))


def test_range_and_consistency_checks(tmp_path):
    with pytest.raises(ConfigError, match="data.corpus"):
        load(write(tmp_path, "data:\n  corpus: s3://bucket\n"))
    with pytest.raises(ConfigError, match="proposers.agent_command"):
        load(write(tmp_path, "proposers:\n  weights: {agent: 1.0}\n"))
    with pytest.raises(ConfigError, match="proposers.weights"):
        load(write(tmp_path, "proposers:\n  weights: {mutnate: 1.0}\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(write(tmp_path, "population: [\n"))


def test_overrides_shrink_the_shipped_train_py():
    cfg = Config()
    constants = read_constants(seed_source(cfg))
    for key, value in cfg.population.overrides.items():
        assert constants[key] == value


def test_unknown_override_is_a_config_error(tmp_path):
    cfg = load(write(tmp_path, "population:\n  overrides: {NOT_A_CONSTANT: 3}\n"))
    with pytest.raises(ConfigError, match="population.overrides.*NOT_A_CONSTANT"):
        seed_source(cfg)


def test_budget_value_shorthand(tmp_path):
    cfg = load(write(tmp_path, "budget: {kind: flops, value: 2.0e+12}\n"))
    assert cfg.budget.kind == "flops" and cfg.budget.flops == 2.0e12
    cfg = load(write(tmp_path, "budget: {kind: time, value: 120}\n"))
    assert cfg.budget.seconds == 120.0
    with pytest.raises(ConfigError, match="budget.value"):
        load(write(tmp_path, "budget: {kind: time, value: 120, seconds: 60}\n"))


def test_overlap_switch_reads_yaml_on_off(tmp_path):
    assert load(write(tmp_path, "resources: {overlap: on}\n")).resources.overlap == "on"
    assert load(write(tmp_path, "resources: {overlap: off}\n")).resources.overlap == "off"
    with pytest.raises(ConfigError, match="resources.overlap"):
        load(write(tmp_path, "resources: {overlap: sometimes}\n"))


@pytest.mark.parametrize("text, key", [
    ("selection:\n  alpha: 1.2\n", "selection.alpha"),
    ("selection:\n  alpha: 0.6\n  beta: 0.5\n", "selection.beta"),
    ("selection:\n  effect_sigmas: 0\n", "selection.effect_sigmas"),
    ("selection:\n  confirm_head_runs: 0\n", "selection.confirm_head_runs"),
])
def test_verdict_rule_knobs_are_range_checked(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(write(tmp_path, text))
