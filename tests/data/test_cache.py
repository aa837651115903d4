"""The decode cache: format round trip, staleness, resume after SIGKILL, bad images, colours, verify."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.data.conftest import make_cfg, make_ctx, write_dataset
from engine.data.cache import CacheBuildError, CacheError, CacheReader, build_cache, open_cache
from engine.data.cache.decode import decode_resized
from engine.data.cache.format import record_stride

REPO = Path(__file__).resolve().parents[2]


def _build(cfg, split="train"):
    return build_cache(cfg, make_ctx(cfg), split, progress=False)


@pytest.mark.parametrize("policy", ["crop", "pad"])
def test_round_trip_pixels_and_fields(dataset, tmp_path, policy):
    cfg = make_cfg(dataset, tmp_path / "cache", f"--cache.resize_policy={policy}", "--cache.stored_size=40")
    ctx = make_ctx(cfg)
    summary = build_cache(cfg, ctx, "train", progress=False)
    reader = open_cache(cfg, ctx, "train")
    data = ctx.split("train")
    assert summary.count == reader.count == len(data) and not summary.rejected
    assert reader.stride == record_stride(40) and reader.stride % 4096 == 0
    for i, path in enumerate(data.paths):
        np.testing.assert_array_equal(reader.record(i), decode_resized(path, 40, policy, True))
    for name in ("rows", "labels", "numeric", "categorical", "input_ids", "attention_mask"):
        np.testing.assert_array_equal(reader.fields[name], getattr(data, name))
    meta = reader.meta
    assert meta["shape"] == [40, 40, 3] and meta["count"] == len(data) and meta["key"]["resize_policy"] == policy
    assert _build(cfg).up_to_date


def test_stale_cache_is_rejected_with_build_command(dataset, tmp_path):
    cfg = make_cfg(dataset, tmp_path / "cache")
    _build(cfg)
    open_cache(cfg, make_ctx(cfg), "train")  # fresh: accepted

    bigger = make_cfg(dataset, tmp_path / "cache", "--cache.stored_size=48")
    with pytest.raises(CacheError, match=r"stale.*stored_size.*build_cache.py.*--cache.stored_size=48"):
        open_cache(bigger, make_ctx(bigger), "train")

    text = dataset.read_text().replace("sample 1 ", "sample one ")
    dataset.write_text(text)
    with pytest.raises(CacheError, match=r"manifest changed.*tools/build_cache.py"):
        open_cache(cfg, make_ctx(cfg), "train")
    from engine.data.loaders import create_loader

    with pytest.raises(CacheError, match="build_cache.py"):
        create_loader(cfg, make_ctx(cfg), "train", True)


def test_stale_when_max_length_changes(dataset, tmp_path):
    pytest.importorskip("transformers")
    try:
        cfg = make_cfg(dataset, tmp_path / "cache", "--model.text_encoder=minilm", "--model.text_max_length=8")
        ctx = make_ctx(cfg)
        ctx.tokenizer
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no offline tokenizer: {e}")
    build_cache(cfg, ctx, "train", progress=False)
    reader = open_cache(cfg, ctx, "train")
    np.testing.assert_array_equal(reader.fields["input_ids"], ctx.split("train").input_ids)
    assert reader.fields["input_ids"].shape[1] == 8
    longer = make_cfg(dataset, tmp_path / "cache", "--model.text_encoder=minilm", "--model.text_max_length=12")
    with pytest.raises(CacheError, match=r"max_length: cache has 8, settings say 12.*--model.text_max_length=12"):
        open_cache(longer, make_ctx(longer), "train")


def _write_recipe(path: Path, manifest: Path, cache_dir: Path) -> Path:
    recipe = {"data": {"manifest": str(manifest), "numeric_columns": ["age"], "categorical_columns": ["site"]},
              "model": {"text_encoder": None},
              "cache": {"dir": str(cache_dir), "stored_size": 32, "chunk_size": 4, "workers": 1, "splits": ["train"]}}
    path.write_text(yaml.safe_dump(recipe))
    return path


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def sigkill_mid_build(tool: list[str], dataset: Path, tmp_path: Path, seconds: float) -> tuple[Path, dict]:
    """Start ``tool`` (tools/build_cache.py ... --config) on a recipe building into tmp_path/killed, SIGKILL it
    once two chunks are done; the partial folder it leaves and the environment to rerun it with."""
    env = dict(os.environ, ENGINE_CACHE_CHUNK_DELAY="0.4", HF_HUB_OFFLINE="1")
    killed = _write_recipe(tmp_path / "killed.yaml", dataset, tmp_path / "killed")
    proc = subprocess.Popen(tool + [str(killed)], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + seconds
    while time.time() < deadline and len(list((tmp_path / "killed").glob("*.partial/chunks/*.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = list((tmp_path / "killed").glob("*.partial"))
    assert partial and len(list(partial[0].glob("chunks/*.json"))) < 6, "the kill must land mid-build"
    env.pop("ENGINE_CACHE_CHUNK_DELAY")
    return partial[0], env


def resume_and_build_whole(tool: list[str], dataset: Path, tmp_path: Path, env: dict) -> tuple[Path, Path]:
    """Rerun the killed build (sigkill_mid_build) to its end and build the same recipe afresh into tmp_path/whole."""
    subprocess.run(tool + [str(tmp_path / "killed.yaml")], cwd=REPO, env=env, check=True, capture_output=True)
    whole = _write_recipe(tmp_path / "whole.yaml", dataset, tmp_path / "whole")
    subprocess.run(tool + [str(whole)], cwd=REPO, env=env, check=True, capture_output=True)
    (a,), (b,) = list((tmp_path / "killed").iterdir()), list((tmp_path / "whole").iterdir())
    return a, b


def test_resume_after_sigkill_is_byte_identical(dataset, tmp_path):
    tool = [sys.executable, str(REPO / "tools/build_cache.py"), "--no-progress", "--config"]
    _, env = sigkill_mid_build(tool, dataset, tmp_path, seconds=30)
    cfg = make_cfg(dataset, tmp_path / "killed", "--cache.stored_size=32", "--cache.splits=[train]")
    with pytest.raises(CacheError, match="partly built.*build_cache.py"):
        open_cache(cfg, make_ctx(cfg), "train")

    a, b = resume_and_build_whole(tool, dataset, tmp_path, env)
    assert a.name == b.name and not a.name.endswith(".partial")
    assert _tree_bytes(a) == _tree_bytes(b)


def _bad_files(root: Path) -> list[dict]:
    good = root / "img" / "0000.jpg"
    (root / "bad").mkdir()
    data = good.read_bytes()
    (root / "bad" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "bad" / "corrupt.jpg").write_bytes(data[:200] + bytes(range(256)) * 8)
    (root / "bad" / "text.jpg").write_text("this is not an image")
    (root / "bad" / "empty.jpg").write_bytes(b"")
    (root / "bad" / "missing.jpg").write_bytes(data)  # deleted after the manifest is validated
    names = ["truncated", "corrupt", "text", "empty", "missing"]
    return [{"image": f"bad/{n}.jpg", "text": n, "age": "30", "site": "a", "label": "dog", "split": "train"} for n in names]


def test_bad_images_error_mode_names_file_and_row(tmp_path):
    root = tmp_path / "data"
    write_dataset(root)
    manifest = write_dataset(root, extra=_bad_files(root))
    cfg = make_cfg(manifest, tmp_path / "cache")
    ctx = make_ctx(cfg)
    with pytest.raises(CacheBuildError, match=r"(?s)manifest row \d+: .*bad/truncated\.jpg: OSError.*on_bad_image=skip"):
        build_cache(cfg, ctx, "train", progress=False)
    with pytest.raises(CacheError):
        open_cache(cfg, ctx, "train")


def test_bad_images_skip_mode_lists_rejects_and_serves_good_rows(tmp_path):
    root = tmp_path / "data"
    write_dataset(root)
    manifest = write_dataset(root, extra=_bad_files(root))
    cfg = make_cfg(manifest, tmp_path / "cache", "--data.on_bad_image=skip", "--loader.balanced_sampling=inverse")
    ctx = make_ctx(cfg)
    (root / "bad" / "missing.jpg").unlink()
    summary = build_cache(cfg, ctx, "train", progress=False)
    assert len(summary.rejected) == 5 and summary.good == summary.count - 5
    reader = open_cache(cfg, ctx, "train")
    rejects = reader.rejects()
    assert sorted(Path(r["path"]).stem for r in rejects) == ["corrupt", "empty", "missing", "text", "truncated"]
    assert all(r["reason"] and r["row"] for r in rejects)
    bad_rows = {int(r["row"]) for r in rejects}
    from engine.data.loaders import create_loader

    served = set()
    for batch in create_loader(cfg, ctx, "train", False):
        served |= set(batch.index.tolist())
    assert served == set(ctx.split("train").rows.tolist()) - bad_rows
    train = create_loader(cfg, ctx, "train", True)  # balanced weights are mapped onto the served rows
    assert all(not (set(b.index.tolist()) & bad_rows) for b in train)


def _solid_jpeg_cmyk(path: Path):
    Image.new("CMYK", (90, 70), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK


def test_colours_grayscale_cmyk_exif_png(tmp_path):
    Image.new("L", (80, 60), 128).save(tmp_path / "gray.jpg", quality=95)
    _solid_jpeg_cmyk(tmp_path / "cmyk.jpg")
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.paste((0, 200, 0, 255), (0, 0, 64, 32))
    rgba.save(tmp_path / "rgba.png")
    pal = Image.new("P", (64, 64), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (0, 32, 64, 64))
    pal.save(tmp_path / "palette.png")
    Image.fromarray(np.full((40, 40), 65535, np.uint16)).save(tmp_path / "gray16.png")
    wide = Image.new("RGB", (120, 60), (255, 0, 0))
    wide.paste((0, 0, 255), (60, 0, 120, 60))  # left red, right blue; orientation 6 = rotate 90 cw to display
    exif = Image.Exif()
    exif[0x0112] = 6
    wide.save(tmp_path / "exif.jpg", quality=95, exif=exif)

    def px(name, policy="crop"):
        return decode_resized(str(tmp_path / name), 32, policy, True).astype(int)

    assert np.abs(px("gray.jpg") - 128).max() <= 2
    red = px("cmyk.jpg")
    assert red[..., 0].min() > 230 and red[..., 1:].max() < 30
    rgba = px("rgba.png")
    assert np.abs(rgba[2, 16] - [0, 200, 0]).max() <= 1 and np.abs(rgba[29, 16] - 255).max() <= 1  # transparent -> white
    pal = px("palette.png")
    assert np.abs(pal[2, 16] - [255, 0, 0]).max() <= 1 and np.abs(pal[29, 16] - [0, 0, 255]).max() <= 1
    assert px("gray16.png").min() == 255
    ex = px("exif.jpg")  # displayed 60x120: top red, bottom blue
    assert ex[2, 16, 0] > 200 and ex[2, 16, 2] < 50 and ex[29, 16, 2] > 200 and ex[29, 16, 0] < 50
    ex_pad = px("exif.jpg", "pad")  # fits 16x32 (w x h) in the middle, black borders left and right
    assert ex_pad[16, 1].max() == 0 and ex_pad[2, 16, 0] > 200


def test_special_images_round_trip_through_the_cache(tmp_path):
    root = tmp_path / "data"
    write_dataset(root)
    _solid_jpeg_cmyk(root / "img" / "cmyk.jpg")
    Image.new("LA", (50, 90), (90, 255)).save(root / "img" / "la.png")
    extra = [{"image": f"img/{n}", "text": "", "age": "1", "site": "a", "label": "eel", "split": "train"} for n in ("cmyk.jpg", "la.png")]
    cfg = make_cfg(write_dataset(root, extra=extra), tmp_path / "cache")
    ctx = make_ctx(cfg)
    build_cache(cfg, ctx, "train", progress=False)
    reader = open_cache(cfg, ctx, "train")
    for i in (-2, -1):
        np.testing.assert_array_equal(reader.record(reader.count + i), decode_resized(ctx.split("train").paths[i], 32, "crop", True))


def test_verify_detects_a_flipped_byte(dataset, tmp_path, capsys):
    sys.path.insert(0, str(REPO / "tools"))
    from build_cache import main

    recipe = _write_recipe(tmp_path / "r.yaml", dataset, tmp_path / "cache")
    assert main(["--config", str(recipe), "--no-progress"]) == 0
    assert main(["--config", str(recipe), "--verify"]) == 0
    (folder,) = list((tmp_path / "cache").iterdir())
    meta = json.loads((folder / "metadata.json").read_text())
    with open(folder / "images.u8", "r+b") as f:
        f.seek(3 * meta["stride"] + 100)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x01]))
    capsys.readouterr()
    assert main(["--config", str(recipe), "--verify"]) == 1
    assert "record 3 " in capsys.readouterr().out
    (folder / "checksums.npy").unlink()  # a damaged cache is an error (2), not a traceback or a mismatch (1)
    with pytest.raises(SystemExit) as e:  # the one user-error exit of every entry point (engine/errors.py)
        main(["--config", str(recipe), "--verify"])
    assert e.value.code == 2 and "is damaged or incomplete" in capsys.readouterr().err


@pytest.mark.parametrize("given,recipe", [("configs/x.yaml", "configs/x.yaml"),  # train.py --config configs/x.yaml
                                          ("configs/y.yaml", "configs/y.yaml"),  # --config=configs/y.yaml
                                          ("runs/demo/config.yaml", "runs/demo/config.yaml"),  # evaluate.py --run runs/demo
                                          (None, "CONFIG.yaml")])
def test_build_command_names_the_recipe_this_process_used(dataset, tmp_path, given, recipe):
    """The recipe is the one the config was loaded from (cfg.origin, recorded by load_config), not sys.argv."""
    from engine.config import ConfigOrigin
    from engine.data.cache.format import build_command

    cfg = make_cfg(dataset, tmp_path / "cache")
    cfg.origin = ConfigOrigin(given, cfg.origin.overrides)
    cmd = build_command(cfg, "val")
    assert cmd.startswith(f"python tools/build_cache.py --config {recipe} ") and "--cache.splits=[val]" in cmd


def test_other_text_or_tabular_settings_reuse_the_pixels(dataset, tmp_path):
    """Only the fields are rebuilt when the pixels' key matches: images.u8 is the same file (hard link)."""
    from engine.data.loaders import create_loader

    first = _build(make_cfg(dataset, tmp_path / "cache"))
    assert first.pixels_from is None and first.decoded == first.count
    fewer = make_cfg(dataset, tmp_path / "cache", "--data.categorical_columns=[]")  # another tabular encoding
    second = _build(fewer)
    assert second.pixels_from == first.folder and second.decoded == 0 and second.folder != first.folder
    assert "pixels reused" in second.line()
    a, b = CacheReader(first.folder), open_cache(fewer, make_ctx(fewer), "train")
    assert os.stat(first.folder / "images.u8").st_ino == os.stat(second.folder / "images.u8").st_ino
    np.testing.assert_array_equal(a.images, b.images)
    assert a.fields["categorical"].shape[1] == 1 and b.fields["categorical"].shape[1] == 0
    assert b.meta["pixels_from"] == first.folder.name
    import shutil

    shutil.rmtree(first.folder)  # the reusing cache keeps its pixels (the inode lives on)
    np.testing.assert_array_equal(CacheReader(second.folder).images, b.images)
    assert sum(len(batch.index) for batch in create_loader(fewer, make_ctx(fewer), "train", False)) == second.count

    dataset.write_text(dataset.read_text().replace("sample 1 ", "sample one "))  # a text fix in the manifest
    third = _build(make_cfg(dataset, tmp_path / "cache", "--data.categorical_columns=[]"))
    assert third.pixels_from == second.folder and third.decoded == 0


def test_pixels_are_not_reused_from_other_images(dataset, tmp_path):
    """The same manifest under another data.root names other files: decoded again, and the old cache is stale."""
    import shutil

    first = _build(make_cfg(dataset, tmp_path / "cache"))
    copy = tmp_path / "copy"
    shutil.copytree(dataset.parent, copy)
    moved = make_cfg(copy / dataset.name, tmp_path / "cache")
    with pytest.raises(CacheError, match="image paths changed"):
        open_cache(moved, make_ctx(moved), "train")
    second = _build(moved)
    assert second.pixels_from is None and second.decoded == second.count and second.folder != first.folder
    bigger = _build(make_cfg(dataset, tmp_path / "cache", "--cache.stored_size=40"))
    assert bigger.pixels_from is None and bigger.decoded == bigger.count


def test_reused_pixels_with_rejects_obey_on_bad_image(tmp_path):
    root = tmp_path / "data"
    write_dataset(root)
    manifest = write_dataset(root, extra=_bad_files(root))
    skip = _build(make_cfg(manifest, tmp_path / "cache", "--data.on_bad_image=skip"))
    assert len(skip.rejected) == 4  # truncated, corrupt, empty, text (missing.jpg is present here)
    reuse = _build(make_cfg(manifest, tmp_path / "cache", "--data.on_bad_image=skip", "--data.categorical_columns=[]"))
    assert reuse.pixels_from == skip.folder and sorted(r["record"] for r in reuse.rejected) == sorted(
        r["record"] for r in skip.rejected)
    strict = make_cfg(manifest, tmp_path / "cache", "--data.numeric_columns=[]")
    with pytest.raises(CacheBuildError, match=r"(?s)manifest row \d+: .*bad/truncated\.jpg"):
        _build(strict)


def test_build_command_repeats_this_process_key_overrides(dataset, tmp_path):
    """A label column or tokenizer given on the command line must reach the rebuild command (not the backbone)."""
    from engine.config import ConfigOrigin, override_items
    from engine.data.cache.format import build_command

    # train.py --config configs/x.yaml ... --resume: argparse keeps --config and --resume, load_config gets the rest
    overrides = ["--data.label_column=label_v2", "--model.backbone", "resnet18", "--model.text_encoder", "minilm",
                 "--run.seed=3", "--cache.splits=[train,val]"]
    cfg = make_cfg(dataset, tmp_path / "cache")
    cfg.origin = ConfigOrigin("configs/x.yaml", tuple(override_items(overrides)))
    cmd = build_command(cfg, "val")
    assert "--data.label_column=label_v2" in cmd and "--model.text_encoder=minilm" in cmd and "--run.seed=3" in cmd
    assert "backbone" not in cmd and "--resume" not in cmd and cmd.count("cache.splits") == 1
    assert "--cache.splits=[val]" in cmd


def test_key_covers_label_and_text_columns(dataset, tmp_path):
    """Switching to a corrected label column (same class names) must not serve the old labels."""
    import csv

    rows = list(csv.DictReader(open(dataset)))
    for i, r in enumerate(rows):
        r["label_v2"] = ["cat", "dog", "eel"][(i + 1) % 3]
    with open(dataset, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    _build(make_cfg(dataset, tmp_path / "cache"))
    v2 = make_cfg(dataset, tmp_path / "cache", "--data.label_column=label_v2")
    with pytest.raises(CacheError, match="label_column: cache has 'label', settings say 'label_v2'"):
        open_cache(v2, make_ctx(v2), "train")
    summary = _build(v2)
    assert summary.pixels_from is not None  # same photos: only the fields are new
    np.testing.assert_array_equal(open_cache(v2, make_ctx(v2), "train").fields["labels"], make_ctx(v2).split("train").labels)


def test_error_mode_refuses_a_cache_built_with_skip(tmp_path):
    root = tmp_path / "data"
    write_dataset(root)
    manifest = write_dataset(root, extra=_bad_files(root))
    _build(make_cfg(manifest, tmp_path / "cache", "--data.on_bad_image=skip"))
    strict = make_cfg(manifest, tmp_path / "cache")
    for attempt in (lambda: _build(strict), lambda: open_cache(strict, make_ctx(strict), "train")):
        with pytest.raises(CacheError, match=r"(?s)leaves out 4 undecodable.*manifest row \d+: .*bad/.*on_bad_image=skip"):
            attempt()


def test_pixels_are_decoded_again_when_an_image_file_changed(dataset, tmp_path):
    """Reuse needs the same files, not only the same paths: a replaced photo is decoded, not served stale."""
    first = _build(make_cfg(dataset, tmp_path / "cache"))
    victim = Path(make_ctx(make_cfg(dataset, tmp_path / "cache")).split("train").paths[0])
    Image.new("RGB", (90, 70), (255, 0, 0)).save(victim, quality=95)
    other = make_cfg(dataset, tmp_path / "cache", "--data.categorical_columns=[]")
    second = _build(other)
    assert second.pixels_from is None and second.decoded == second.count != 0 and first.folder != second.folder
    np.testing.assert_array_equal(open_cache(other, make_ctx(other), "train").record(0), decode_resized(str(victim), 32, "crop", True))
