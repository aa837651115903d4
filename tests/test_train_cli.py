"""`engine/train.py` stops before any training on bad input, with one message naming the key, file or row."""
import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.train import main

ROOT = Path(__file__).resolve().parents[1]


def _recipe(tmp_path, manifest: Path) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(f"inherit: {ROOT / 'configs/demo.yaml'}\ndata: {{manifest: {manifest}}}\n"
                 f"run: {{output_dir: {tmp_path / 'runs'}}}\n")
    return p


def test_config_typo_exits_naming_the_key(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--config", str(ROOT / "configs/demo.yaml"), "--optim.lrr=0.1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "config error" in err


def test_typos_get_a_suggestion_in_overrides_and_in_yaml(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--config", str(ROOT / "configs/demo.yaml"), "--optim.lrr=0.1"])
    assert "did you mean 'optim.lr'?" in capsys.readouterr().err
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(f"inherit: {ROOT / 'configs/demo.yaml'}\nmodel: {{backbon: resnet18}}\n")
    with pytest.raises(SystemExit):
        main(["--config", str(recipe)])
    err = capsys.readouterr().err
    assert "unknown key 'model.backbon'; did you mean 'model.backbone'?" in err and str(recipe) in err
    with pytest.raises(SystemExit):
        main(["--config", str(ROOT / "configs/demo.yaml"), "--modle.fusion=gated"])
    assert "did you mean 'model'?" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # nothing close: no guess, the list
        main(["--config", str(ROOT / "configs/demo.yaml"), "--train.zzzz=1"])
    err = capsys.readouterr().err
    assert "did you mean" not in err and "known keys in train:" in err


def test_print_config_lists_every_key_with_value_default_and_comment(capsys):
    import dataclasses

    import yaml

    from engine.config import Config

    assert main(["--config", str(ROOT / "configs/demo.yaml"), "--print-config", "--train.epochs=7"]) == {}
    out = capsys.readouterr().out
    assert "  epochs: 7  # total epochs (frozen + finetune) [default: 1]" in out  # override, comment, default
    assert "  backbone: resnet18  # registry alias, timm name" in out  # a comment on the lines above the field
    assert "  image_size: 64  # training resolution (crops are taken at this size) [default: 224]" in out
    assert ("  seed: 0  # seeds Python" in out
            and "seed: 0  # seeds Python, numpy, torch, the data order and augmentation [" not in out)
    tree = yaml.safe_load(out)  # the listing is YAML: it can start a recipe
    for section in dataclasses.fields(Config):
        assert set(tree[section.name]) == {f.name for f in dataclasses.fields(section.type if isinstance(section.type, type)
                                                                              else type(getattr(Config(), section.name)))}
    assert tree["train"]["epochs"] == 7 and tree["data"]["image_size"] == 64
    main(["--print-config"])  # no recipe: the defaults
    assert "  image_size: 224  # training resolution" in capsys.readouterr().out


def test_wrong_type_exits_naming_the_key(capsys):
    with pytest.raises(SystemExit):
        main(["--config", str(ROOT / "configs/demo.yaml"), "--train.epochs=abc"])
    assert "train.epochs" in capsys.readouterr().err


def test_manifest_problems_stop_before_training(tmp_path, capsys):
    (tmp_path / "a.jpg").write_bytes(b"")
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "text", "age", "site", "label", "split"])
        w.writerow(["a.jpg", "t", "1", "x", "c", "train"])
        w.writerow(["../outside.jpg", "t", "1", "x", "c", "val"])
    with pytest.raises(SystemExit) as e:
        main(["--config", str(_recipe(tmp_path, manifest))])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "escape data.root" in err and "line 3" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_missing_cache_is_one_message_with_the_build_command(tmp_path, capsys):
    from make_demo_data import make_demo_data

    manifest = make_demo_data(tmp_path / "d", 4, 2, 2, workers=1, sizes=[(64, 48)])
    with pytest.raises(SystemExit):
        main(["--config", str(_recipe(tmp_path, manifest)), f"--cache.dir={tmp_path / 'nocache'}", "--loader.batch_size=2"])
    err = capsys.readouterr().err
    assert re.search(r"(^|\n)error: no train cache", err) and "tools/build_cache.py" in err and "Traceback" not in err


def test_launcher_style_script_invocation_reports_config_error():
    """`python engine/train.py` works without installing (the launcher runs the file, not the module)."""
    out = subprocess.run([sys.executable, str(ROOT / "engine/train.py"), "--config", str(ROOT / "configs/demo.yaml"),
                          "--local_rank=0", "--model.fusion=sum"], capture_output=True, text=True, cwd="/")
    assert out.returncode == 2 and "model.fusion" in out.stderr


def test_card_without_kernels_in_installed_torch_refused_at_start(tmp_path, capsys, monkeypatch):
    """A Pascal card under the sm_75+ torch `make install` pins: one line naming the card and the build, exit 2."""
    from engine import hardware

    monkeypatch.setenv(hardware.FORCE_ENV, "6.1")
    monkeypatch.setenv(hardware.FORCE_ARCH_ENV, "sm_75,sm_80,sm_86,sm_90,sm_100,sm_120")
    with pytest.raises(SystemExit) as e:
        main(["--config", str(ROOT / "configs/demo.yaml"), f"--run.output_dir={tmp_path}"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "capability 6.1" in err and "make install TORCH_INDEX=cu126" in err
    assert not (tmp_path / "demo").exists()  # refused before the run folder or any data
