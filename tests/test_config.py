"""The config schema: defaults equal configs/demo.yaml, bad keys and types are named with their file."""
import dataclasses
from pathlib import Path

import pytest

from orchestrator.config import (MAX_POPULATION, NUMBER_RULES, Config, ConfigError, builtin_demo, load,
                                 numeric_settings, seed_source)
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
    cfg = builtin_demo()
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


def test_a_config_that_omits_overrides_trains_the_real_baseline(tmp_path):
    cfg = load(write(tmp_path, "population:\n  size: 3\n"))
    assert cfg.population.overrides == {} and Config().population.overrides == {}
    baseline = (REPO / "trainer" / "train.py").read_text()
    assert seed_source(cfg) == baseline
    assert builtin_demo().population.overrides        # only the built-in demo (and demo.yaml) shrink it


def test_scientific_notation_is_read_as_a_number(tmp_path):
    cfg = load(write(tmp_path, "budget: {kind: flops, flops: 1e15, seconds: 3e2}\npopulation: {size: 1e1}\n"))
    assert cfg.budget.flops == 1e15 and cfg.budget.seconds == 300.0
    assert cfg.population.size == 10 and isinstance(cfg.population.size, int)
    with pytest.raises(ConfigError, match=r"population\.size.*int"):
        load(write(tmp_path, "population: {size: 2.5e0}\n"))


def test_an_empty_config_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="empty") as err:
        load(write(tmp_path, "# nothing but a comment\n"))
    assert str(tmp_path / "bad.yaml") in str(err.value)


@pytest.mark.parametrize("text,key", [
    ("budget:\n  startup_floor: -1", "budget.startup_floor"),
    ("budget:\n  finish_allowance: -5", "budget.finish_allowance"),
    ("budget:\n  overrun_tolerance: -0.1", "budget.overrun_tolerance"),
    ("stop:\n  max_wall_seconds: -60", "stop.max_wall_seconds"),
    ("selection:\n  patience: -1", "selection.patience"),
    ("resources:\n  max_retries: -1", "resources.max_retries"),
    ("resources:\n  cpu_slots: -2", "resources.cpu_slots"),
    ("judge:\n  timeout_seconds: -1", "judge.timeout_seconds"),
    ("selection:\n  cull_every: 0", "selection.cull_every"),
    ("budget:\n  seconds: .inf", "budget.seconds"),
    ("budget:\n  seconds: .nan", "budget.seconds"),
    ("budget:\n  seconds: 1e999", "budget.seconds"),
    ("population:\n  size: 100000", "population.size"),
])
def test_out_of_range_numbers_name_the_file_key_and_line(tmp_path, text, key):
    path = write(tmp_path, "seed: 0\n" + text + "\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert f"{path}:3: key '{key}'" in str(err.value), str(err.value)


def test_the_population_cap_gives_its_reason(tmp_path):
    with pytest.raises(ConfigError, match=f"between 1 and {MAX_POPULATION}.*branch"):
        load(write(tmp_path, f"population: {{size: {MAX_POPULATION + 1}}}\n"))
    assert load(write(tmp_path, f"population: {{size: {MAX_POPULATION}}}\n")).population.size == MAX_POPULATION


def test_every_numeric_setting_has_a_range_rule():
    assert sorted(set(numeric_settings(Config())) - set(NUMBER_RULES)) == []
    assert sorted(set(NUMBER_RULES) - set(numeric_settings(Config()))) == []


def test_bad_yaml_and_bad_types_name_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"bad\.yaml:3: not valid YAML"):
        load(write(tmp_path, "seed: 0\npopulation:\n\tsize: 1\n"))
    with pytest.raises(ConfigError, match=r"bad\.yaml:3: key 'budget\.seconds' must be float"):
        load(write(tmp_path, "seed: 0\nbudget:\n  seconds: five\n"))
    with pytest.raises(ConfigError, match=r"bad\.yaml:2: unknown key 'population\.sise'"):
        load(write(tmp_path, "population:\n  sise: 3\n"))


def test_a_seed_that_does_not_parse_names_its_file_and_line(tmp_path):
    seed = tmp_path / "seed.py"
    seed.write_text("x = 1\ndef broken(:\n    pass\n")
    cfg = load(write(tmp_path, f"population: {{seed_train_py: {seed}}}\n"))
    with pytest.raises(ConfigError, match=f"{seed}:2: the seed train.py does not parse"):
        seed_source(cfg)


def test_a_missing_local_corpus_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.corpus.*no such folder"):
        load(write(tmp_path, f"data: {{corpus: 'local:{tmp_path / 'missing'}'}}\n"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"data\.corpus.*no .parquet, .txt or .jsonl"):
        load(write(tmp_path, f"data: {{corpus: 'local:{tmp_path / 'empty'}'}}\n"))
@pytest.mark.parametrize("text, key", [
    ("selection:\n  promote_at: 1.2\n", "selection.promote_at"),
    ("selection:\n  promote_at: 0.3\n  discard_at: 0.5\n", "selection.discard_at"),
    ("selection:\n  prior_sd: 0\n", "selection.prior_sd"),
    ("selection:\n  prior_null: 1\n", "selection.prior_null"),
    ("selection:\n  rerun_head_runs: 0\n", "selection.rerun_head_runs"),
])
def test_verdict_rule_knobs_are_range_checked(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(write(tmp_path, text))


def test_a_config_that_omits_a_section_gets_its_dataclass_defaults_not_the_demos(tmp_path):
    from judge.spec import JudgeConfig
    from orchestrator.config import SelectionConfig, StopConfig
    from trainer.spec import BudgetConfig
    cfg = load(write(tmp_path, "population:\n  size: 3\n"))
    assert (cfg.budget, cfg.judge, cfg.selection, cfg.stop) == (BudgetConfig(), JudgeConfig(), SelectionConfig(),
                                                                 StopConfig())
    assert cfg.budget.seconds == 300.0 and cfg.stop.max_trials == 0 and cfg.selection.rerun_head_runs == 6
    demo = builtin_demo()                                # the demo's short values stay in the demo
    assert (demo.budget.seconds, demo.stop.max_trials, demo.selection.head_runs, demo.judge.seq_len) == (8.0, 16, 3, 128)
