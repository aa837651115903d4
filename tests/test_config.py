import pytest
import yaml

from engine.config import ConfigError, config_from_dict, load_config, parse_overrides, save_config


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_yaml_and_overrides_fill_sections(tmp_path):
    p = write(tmp_path, "run: {name: a, seed: 3}\ntrain: {epochs: 2}\ndata: {numeric_columns: [x, y]}\n")
    cfg = load_config(p, ["--train.epochs=5", "--optim.lr", "1e-4", "--model.fusion=gated"])
    assert cfg.run.name == "a" and cfg.run.seed == 3
    assert cfg.train.epochs == 5
    assert cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.model.fusion == "gated"
    assert cfg.data.numeric_columns == ["x", "y"]


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "optim: {lrr: 0.1}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "optim.lrr" in str(e.value) and str(p) in str(e.value)


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="'trian'"):
        load_config(write(tmp_path, "trian: {epochs: 1}\n"))


def test_wrong_type_override_names_key():
    with pytest.raises(ConfigError, match=r"train\.epochs.*'abc'"):
        load_config(None, ["--train.epochs=abc"])


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(None, ["--train.epochs=true"])


def test_literal_choices_listed():
    with pytest.raises(ConfigError, match=r"model\.fusion.*concat"):
        load_config(None, ["--model.fusion=sum"])


def test_post_init_validation_names_key():
    with pytest.raises(ConfigError, match="train.frozen_epochs"):
        load_config(None, ["--train.epochs=1", "--train.frozen_epochs=3"])


def test_list_type_checked():
    with pytest.raises(ConfigError, match=r"data\.numeric_columns"):
        load_config(None, ["--data.numeric_columns=age"])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="section.key"):
        parse_overrides(["epochs=3"])
    with pytest.raises(ConfigError, match="no value"):
        parse_overrides(["--train.epochs"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "run: [unclosed\n"))


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["--run.name=x", "--augment.scale=[0.2, 1.0]", "--deepspeed.extra={steps_per_print: 5}"])
    save_config(cfg, tmp_path / "config.yaml", provenance={"git_commit": "abc"})
    tree = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert tree["provenance"]["git_commit"] == "abc"
    again = config_from_dict(tree)
    assert again == cfg


def test_inherit_recipe(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {epochs: 7}\nmodel: {fusion: gated, backbone: resnet18}\n")
    child = write(tmp_path, "inherit: base.yaml\nmodel: {backbone: null}\n")
    cfg = load_config(child)
    assert cfg.train.epochs == 7 and cfg.model.fusion == "gated" and cfg.model.backbone is None


def test_inherit_missing_and_cycle(tmp_path):
    with pytest.raises(ConfigError, match="inherit"):
        load_config(write(tmp_path, "inherit: nope.yaml\n"))
    (tmp_path / "a.yaml").write_text("inherit: b.yaml\n")
    (tmp_path / "b.yaml").write_text("inherit: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_shipped_recipes_load():
    from pathlib import Path

    for recipe in sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml")):
        load_config(recipe)


def test_a_runs_resolved_config_loads_as_a_recipe(tmp_path):
    cfg = load_config(None, ["--run.name=x", "--train.epochs=3"])
    save_config(cfg, tmp_path / "config.yaml", provenance={"git_commit": "abc", "seed": 0})
    again = load_config(tmp_path / "config.yaml", ["--train.epochs=5"])
    assert again.run.name == "x" and again.train.epochs == 5


def test_errors_in_an_inherited_recipe_name_that_file(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {epochs: 3}\ntraim: {x: 1}\n")
    child = tmp_path / "child.yaml"
    child.write_text("inherit: base.yaml\nrun: {name: c}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'traim'.*\[in .*base\.yaml\]"):
        load_config(child)
    (tmp_path / "base.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: not valid YAML"):
        load_config(child)
    (tmp_path / "base.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: top level must be a mapping"):
        load_config(child)
    (tmp_path / "base.yaml").write_text("train: {epochs: many}\n")  # a value error: the chain is named
    with pytest.raises(ConfigError, match=r"train\.epochs.*\[in .*child\.yaml \(inherits base\.yaml\)"):
        load_config(child)


def test_dotted_override_inside_deepspeed_extra_keeps_the_other_keys(tmp_path):
    p = write(tmp_path, "deepspeed: {extra: {gradient_clipping: 0.5, zero_optimization: {offload_optimizer: {device: cpu}}}}\n")
    cfg = load_config(p, ["--deepspeed.extra.steps_per_print=5", "--deepspeed.extra.zero_optimization.stage=2"])
    assert cfg.deepspeed.extra == {"gradient_clipping": 0.5, "steps_per_print": 5,
                                   "zero_optimization": {"offload_optimizer": {"device": "cpu"}, "stage": 2}}


def test_load_config_records_its_origin(tmp_path):
    """What a rebuild command repeats (format.build_command) comes from the config, never from sys.argv."""
    p = write(tmp_path, "train: {epochs: 2}\n")
    cfg = load_config(p, ["--data.root", "x", "--run.seed=3"])
    assert cfg.origin.recipe == str(p) and cfg.origin.overrides == (("data.root", "x"), ("run.seed", "3"))
    assert "origin" not in cfg.to_dict() and load_config(None).origin.recipe is None
