"""Every entry point answers a user's mistake the same way: one line naming the key/file/row, exit 2, no traceback.

Table-driven and in-process (each entry point's ``main(argv)``, SystemExit caught); a few cases run as real
subprocesses to show stderr holds no traceback there either. Nothing here trains more than one tiny epoch.
"""
from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs/demo.yaml")


def _write_csv(path: Path, rows: list[list[str]], encoding: str = "utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as f:
        csv.writer(f).writerows(rows)
    return path


@pytest.fixture(scope="module")
def inputs(tiny_demo_dataset, tiny_text_encoder, tmp_path_factory) -> dict:
    """Manifests with one mistake each, overrides of a tiny model on the PIL backend, a finished 1-epoch run."""
    tmp = tmp_path_factory.mktemp("user_errors")
    header = ["image", "text", "age", "site", "label", "split"]
    img = "a.jpg"  # beside the manifests below
    shutil.copy(sorted((tiny_demo_dataset.parent / "images" / "train").iterdir())[0], tmp / img)
    good = [header, *([img, "t", "1", "a", "x", split] for split in ("train", "val", "test"))]
    manifests = {
        "no_text_column": _write_csv(tmp / "no_text.csv", [[c for c in header if c != "text"], [img, "1", "a", "x", "train"]]),
        "not_utf8": _write_csv(tmp / "latin1.csv", good + [[img, "caf\xe9", "1", "a", "x", "train"]], encoding="latin-1"),
        "no_val": _write_csv(tmp / "no_val.csv", good[:2]),
        "escaping": _write_csv(tmp / "escaping.csv", good + [["../../outside.jpg", "t", "1", "a", "x", "train"]]),
    }
    tiny = [f"--data.manifest={tiny_demo_dataset}", "--data.image_size=32", "--model.backbone=test_resnet",
            f"--model.text_encoder={tiny_text_encoder}", "--model.text_max_length=16", "--model.fusion_dim=32",
            "--loader.backend=pil", "--loader.batch_size=8", "--loader.num_workers=0", "--train.max_steps_per_epoch=2",
            "--train.epochs=1", "--optim.warmup_steps=0", "--run.name=refused", f"--run.output_dir={tmp / 'runs'}",
            f"--cache.dir={tmp / 'cache'}"]
    from engine.train import main as train_main

    train_main(["--config", DEMO, *tiny, "--run.name=done"])
    no_best = tmp / "runs" / "no_best"
    shutil.copytree(tmp / "runs" / "done", no_best)
    shutil.rmtree(no_best / "checkpoints" / "best")
    a_file = tmp / "a_file"
    a_file.write_text("")
    return {"tmp": tmp, "tiny": tiny, "manifests": manifests, "run": tmp / "runs" / "done", "no_best": no_best,
            "a_file": a_file}


def _train(*extra):
    def run(x):
        from engine.train import main

        return main(["--config", DEMO, *x["tiny"], *extra])
    return run


def _train_m(manifest_key: str, *extra):
    def run(x):
        from engine.train import main

        return main(["--config", DEMO, *x["tiny"], f"--data.manifest={x['manifests'][manifest_key]}", *extra])
    return run


def _build(*extra, manifest_key: str | None = None):
    def run(x):
        from build_cache import main

        manifest = [f"--data.manifest={x['manifests'][manifest_key]}"] if manifest_key else []
        return main(["--config", DEMO, *x["tiny"], *manifest, "--no-progress", *extra])
    return run


def _nan_loss(x, monkeypatch):
    from engine.train import main
    from engine.training import step

    real = step.training_loss
    monkeypatch.setattr(step, "training_loss", lambda *a, **k: (lambda loss, p: (loss * float("nan"), p))(*real(*a, **k)))
    return main(["--config", DEMO, *x["tiny"], "--run.name=nan"])


def _evaluate(run_key: str, *extra):
    def run(x):
        from evaluate import main

        return main(["--run", str(x[run_key]), "--loader.num_workers=0", *extra])
    return run


CASES = {
    # tools/build_cache.py: every mistake of the config and the manifest, not only the cache's
    "build_cache unknown key": (_build("--data.manifestt=x"), "data.manifestt"),
    "build_cache missing manifest": (_build("--data.manifest=/nonexistent/m.csv"), "/nonexistent/m.csv"),
    "build_cache missing column": (_build(manifest_key="no_text_column"), "column 'text'"),
    "build_cache non-UTF-8 manifest": (_build(manifest_key="not_utf8"), "not UTF-8"),
    "build_cache empty split": (_build(manifest_key="no_val"), "split 'val' has no rows"),
    "build_cache ../ path": (_build(manifest_key="escaping"), "escape data.root"),
    # engine/train.py: found before any data is read or DeepSpeed starts
    "train unknown backbone": (_train("--model.backbone=resnet_nope"), "model.backbone='resnet_nope'"),
    "train unknown text encoder": (_train("--model.text_encoder=/no/such/encoder"), "model.text_encoder"),
    "train offline hub text encoder": (_train("--model.text_encoder=pubmedbert"), "model.text_encoder='pubmedbert"),
    "train offline hub backbone weights": (_train("--model.backbone=resnet50", "--model.pretrained=true"),
                                           "model.backbone='resnet50': pretrained weights"),
    "train offline hub tower": (_train("--model.backbone=nobody/no-such-siglip"), "model.backbone='nobody/no-such-siglip'"),
    "train batch larger than data": (_train("--loader.batch_size=4096"), "loader.batch_size=4096"),
    "train grad_accum over an epoch": (_train("--train.grad_accum=5"), "train.grad_accum=5"),
    "train fp16 on CPU": (_train("--train.precision=fp16"), "train.precision=fp16"),
    "train resume with nothing": (_train("--run.name=never_ran", "--resume"), "--resume: nothing to resume"),
    "train existing run": (_train("--run.name=done"), "--resume"),
    "train output folder not writable": (lambda x: _train(f"--run.output_dir={x['a_file']}/runs")(x), "run.output_dir"),
    "train NaN loss": (_nan_loss, "non-finite loss"),
    "train eval.metric unknown": (_train("--eval.metric=val_acc"), "eval.metric='val_acc'"),
    "train log_every 0": (_train("--train.log_every=0"), "train.log_every"),
    "train label smoothing 5": (_train("--train.label_smoothing=5"), "train.label_smoothing"),
    "train topk 0": (_train("--eval.topk=0"), "eval.topk"),
    "train negative warmup": (_train("--optim.warmup_steps=-1"), "optim.warmup_steps"),
    "train negative grad clip": (_train("--train.grad_clip=-1"), "train.grad_clip"),
    "train bad run.name": (_train("--run.name=a/b"), "run.name"),
    "train missing cache": (_train("--loader.backend=cache", "--cache.dir=/nonexistent/cache"), "no train cache"),
    "train manifest missing": (_train("--data.manifest=/nonexistent/m.csv"), "/nonexistent/m.csv"),
    "train manifest ../ path": (_train_m("escaping"), "escape data.root"),
    # tools/evaluate.py
    "evaluate run without best": (_evaluate("no_best"), "no checkpoint 'best'"),
    "evaluate not a run folder": (_evaluate("tmp"), "config.yaml"),
    # the other tools
    "show_metrics no run": (lambda x: __import__("show_metrics").main([str(x["tmp"] / "nope")]), "metrics.jsonl"),
    "profile_throughput unknown key": (lambda x: __import__("profile_throughput").main(["--config", DEMO, "--train.epochz=1"]),
                                       "train.epochz"),
    "bench_decode missing manifest": (lambda x: __import__("bench_decode").main(["--manifest", "/nonexistent/m.csv"]),
                                      "/nonexistent/m.csv"),
    "bench_loaders unknown key": (lambda x: __import__("bench_loaders").main(["--config", DEMO, "--loader.batchsize=1"]),
                                  "loader.batchsize"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_mistake_is_one_line_and_exit_2(case, inputs, capsys, monkeypatch):
    run, named = CASES[case]
    snapshot = {p: p.read_bytes() for p in sorted(inputs["run"].rglob("*")) if p.is_file() and p.suffix != ".png"}
    if case.startswith("train") and run is not _nan_loss:  # found before DeepSpeed starts, not after its start-up
        from engine.training import loop

        monkeypatch.setattr(loop, "init_distributed", lambda: pytest.fail("DeepSpeed started before the check"))
    with pytest.raises(SystemExit) as e:
        run(inputs, monkeypatch) if run is _nan_loss else run(inputs)
    err = capsys.readouterr().err
    assert e.value.code == 2, err[-2000:]
    assert named in err, err[-2000:]
    assert "Traceback" not in err
    assert any(line.startswith(("error: ", "config error: ")) and named in line for line in err.splitlines()), err[-2000:]
    after = {p: p.read_bytes() for p in sorted(inputs["run"].rglob("*")) if p.is_file() and p.suffix != ".png"}
    assert after == snapshot, "a refused start changed the finished run"


def test_debug_switch_shows_the_traceback(capsys, monkeypatch):
    from engine.train import main

    monkeypatch.setenv("ENGINE_DEBUG", "1")
    with pytest.raises(SystemExit) as e:
        main(["--config", DEMO, "--eval.metric=val_acc"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" in err and "eval.metric='val_acc'" in err.splitlines()[-1]


@pytest.mark.parametrize("argv, named", [
    (["tools/build_cache.py", "--config", DEMO, "--data.manifest=/nonexistent/m.csv"], "/nonexistent/m.csv"),
    (["engine/train.py", "--config", DEMO, "--model.backbone=resnet_nope"], "model.backbone"),
    (["tools/evaluate.py", "--run", "/nonexistent/run"], "config.yaml"),
], ids=["build_cache", "train", "evaluate"])
def test_real_stderr_has_no_traceback(argv, named):
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert named in p.stderr and "Traceback" not in p.stderr
