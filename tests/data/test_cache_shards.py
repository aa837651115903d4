"""Sharded cache builds: disjoint shards, one claim per shard, resume of a killed shard, seal = single build."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.data.conftest import make_cfg, make_ctx, write_dataset
from tests.data.test_cache import _tree_bytes
from engine.data.cache import CacheError, build_cache, open_cache
from engine.data.cache.shards import Shard, claim_holder, parse_shard, running_shards, workers_per_builder
from engine.data.cache.writer import seal_cache
from engine.errors import UserError

REPO = Path(__file__).resolve().parents[2]
TOOL = [sys.executable, str(REPO / "tools/build_cache.py"), "--no-progress", "--config"]


def _only_cache(cache_dir: Path) -> Path:
    (folder,) = [p for p in cache_dir.iterdir() if p.is_dir()]
    assert not folder.name.endswith(".partial")
    return folder


def _with_bad_images(root: Path) -> Path:
    """The tiny dataset plus two undecodable files in the train split (rejects must shard like records)."""
    write_dataset(root)  # the images first: a bad file is cut from one of them
    (root / "bad").mkdir()
    (root / "bad" / "text.jpg").write_text("not an image")
    data = (root / "img" / "0000.jpg").read_bytes()
    (root / "bad" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    extra = [{"image": f"bad/{n}.jpg", "text": n, "age": "30", "site": "a", "label": "dog", "split": "train"}
             for n in ("text", "truncated")]
    return write_dataset(root, extra=extra)


def test_shards_partition_the_chunks_into_disjoint_contiguous_ranges():
    for n_chunks in range(0, 23):
        for count in range(1, 8):
            ranges = [Shard(i, count).chunks(n_chunks) for i in range(count)]
            assert [k for r in ranges for k in r] == list(range(n_chunks))  # each chunk once, in order
            assert all(r.step == 1 for r in ranges)


def test_parse_shard_and_its_mistakes():
    assert parse_shard("2/5") == Shard(2, 5)
    assert parse_shard("auto", {"RANK": "1", "WORLD_SIZE": "4"}) == Shard(1, 4)
    assert parse_shard("auto", {"SLURM_PROCID": "3", "SLURM_NTASKS": "8"}) == Shard(3, 8)
    for bad, match in (("5/5", "0 <= I < N"), ("1", "expected I/N"), ("a/b", "integers"), ("0/0", "N >= 1")):
        with pytest.raises(UserError, match=match):
            parse_shard(bad)
    with pytest.raises(UserError, match="no launcher rank"):
        parse_shard("auto", {})
    assert workers_per_builder(3, {"LOCAL_SIZE": "8"}) == 3  # cache.workers set: as given
    assert workers_per_builder(0, {"LOCAL_SIZE": str(os.cpu_count())}) == 1  # all cores, shared by the node's ranks
    assert workers_per_builder(0, {}) == (os.cpu_count() or 1)


@pytest.mark.parametrize("storage", ["raw", "jpeg"])
def test_sharded_build_then_seal_is_byte_identical_to_a_single_build(tmp_path, storage):
    manifest = _with_bad_images(tmp_path / "data")
    opts = ("--data.on_bad_image=skip", f"--cache.storage={storage}", "--cache.splits=[train]")
    single = make_cfg(manifest, tmp_path / "single", *opts)
    whole = build_cache(single, make_ctx(single), "train", progress=False)
    assert len(whole.rejected) == 2

    cfg = make_cfg(manifest, tmp_path / "sharded", *opts)
    ctx = make_ctx(cfg)
    n = len(ctx.split("train"))  # 26 records in chunks of 4: 7 chunks over 3 shards of 2, 2 and 3 chunks
    parts = [build_cache(cfg, ctx, "train", progress=False, shard=Shard(i, 3)) for i in (2, 0, 1)]
    assert sorted(p.records for p in parts) == [(0, 8), (8, 16), (16, n)]
    assert sum(p.decoded for p in parts) == n and sum(len(p.rejected) for p in parts) == 2
    with pytest.raises(CacheError, match="partly built"):  # shards done but not sealed: not a cache yet
        open_cache(cfg, ctx, "train")
    sealed = seal_cache(cfg, ctx, "train")
    assert sealed.good == n - 2
    assert _tree_bytes(_only_cache(tmp_path / "sharded")) == _tree_bytes(_only_cache(tmp_path / "single"))
    assert seal_cache(cfg, ctx, "train").up_to_date  # sealing again is harmless
    assert open_cache(cfg, ctx, "train").storage == storage


def test_seal_names_each_missing_or_unfinished_shard(dataset, tmp_path):
    cfg = make_cfg(dataset, tmp_path / "cache", "--cache.splits=[train]")  # 24 records: 6 chunks, 2 per shard of 3
    ctx = make_ctx(cfg)
    with pytest.raises(CacheError, match="nothing to seal.*--shard I/N"):
        seal_cache(cfg, ctx, "train")
    build_cache(cfg, ctx, "train", progress=False, shard=Shard(0, 3))
    build_cache(cfg, ctx, "train", progress=False, shard=Shard(2, 3))
    (partial,) = (tmp_path / "cache").glob("*.partial")
    (partial / "chunks" / "00000005.json").unlink()  # shard 2's last chunk: as if killed before its done flag
    with pytest.raises(CacheError) as err:
        seal_cache(cfg, ctx, "train")
    msg = str(err.value)
    assert "shard 1/3 not started: run " in msg and "build_cache.py" in msg and "--shard 1/3" in msg
    assert "shard 2/3 unfinished (1 of 2 chunks done)" in msg and "shard 0/3" not in msg

    proc = subprocess.run(TOOL + [str(_recipe(tmp_path, dataset, tmp_path / "cache")), "--seal"], cwd=REPO,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True)
    assert proc.returncode == 2 and "shard 1/3 not started" in proc.stderr  # one line, exit 2, at the entry point

    build_cache(cfg, ctx, "train", progress=False, shard=Shard(1, 3))
    build_cache(cfg, ctx, "train", progress=False, shard=Shard(2, 3))  # resumes: only the missing chunk
    summary = seal_cache(cfg, ctx, "train")
    assert summary.good == 24 and not list((tmp_path / "cache").glob("*.partial"))


def test_a_shard_held_by_a_builder_is_refused_to_a_second_one_and_to_the_seal(dataset, tmp_path):
    cfg = make_cfg(dataset, tmp_path / "cache", "--cache.splits=[train]")
    ctx = make_ctx(cfg)
    build_cache(cfg, ctx, "train", progress=False, shard=Shard(0, 2))
    (partial,) = (tmp_path / "cache").glob("*.partial")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[2]); from pathlib import Path; "
         "from engine.data.cache.shards import Shard, ShardClaim; c = ShardClaim.take(Path(sys.argv[1]), Shard(1, 2)); "
         "print('claimed', flush=True); import time; time.sleep(600)", str(partial), str(REPO)],
        stdout=subprocess.PIPE, text=True)  # stands in for a running builder of shard 1/2
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with pytest.raises(UserError, match=rf"shard 1/2 of {partial.name} is being built by host .*, pid {holder.pid}"):
            build_cache(cfg, ctx, "train", progress=False, shard=Shard(1, 2))
        with pytest.raises(CacheError, match=rf"shard\(s\) 1/2 \(by host .*pid {holder.pid}.*still being built"):
            seal_cache(cfg, ctx, "train")
        assert running_shards(partial) == [f"1/2 (by {claim_holder(partial, Shard(1, 2))})"]
        assert f"pid {holder.pid}" in running_shards(partial)[0]
        with pytest.raises(CacheError, match="being built as 2 shards.*--shard I/2"):  # another count would overlap it
            build_cache(cfg, ctx, "train", progress=False, shard=Shard(0, 3))
        with pytest.raises(CacheError, match="started with decoder 'pil'.*running"):  # never wiped under a builder
            dali = make_cfg(dataset, tmp_path / "cache", "--cache.splits=[train]", "--cache.decoder=dali")
            build_cache(dali, make_ctx(dali), "train", progress=False, shard=Shard(1, 2))
    finally:
        holder.kill()
        holder.wait()
    build_cache(cfg, ctx, "train", progress=False, shard=Shard(1, 2))  # its holder died: the claim is free again
    assert running_shards(partial) == []
    assert seal_cache(cfg, ctx, "train").good == 24


def test_a_plain_build_finishes_a_sharded_partial(dataset, tmp_path):
    cfg = make_cfg(dataset, tmp_path / "cache", "--cache.splits=[train]")
    ctx = make_ctx(cfg)
    build_cache(cfg, ctx, "train", progress=False, shard=Shard(1, 4))
    summary = build_cache(cfg, ctx, "train", progress=False)  # the other three shards, then the seal
    assert summary.good == 24 and summary.decoded == 24 - 8  # shard 1/4 held chunks 1-2 of 6
    single = make_cfg(dataset, tmp_path / "single", "--cache.splits=[train]")
    build_cache(single, make_ctx(single), "train", progress=False)
    assert _tree_bytes(_only_cache(tmp_path / "cache")) == _tree_bytes(_only_cache(tmp_path / "single"))


def _recipe(tmp_path: Path, manifest: Path, cache_dir: Path) -> Path:
    path = tmp_path / f"{cache_dir.name}.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"manifest": str(manifest), "numeric_columns": ["age"], "categorical_columns": ["site"]},
        "model": {"text_encoder": None},
        "cache": {"dir": str(cache_dir), "stored_size": 32, "chunk_size": 2, "workers": 1, "splits": ["train"]},
    }))
    return path


def test_two_shard_processes_side_by_side_a_killed_one_resumes_and_the_seal_equals_one_build(dataset, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    sharded = _recipe(tmp_path, dataset, tmp_path / "sharded")
    slow = dict(env, ENGINE_CACHE_CHUNK_DELAY="0.3")
    procs = [subprocess.Popen(TOOL + [str(sharded), "--shard", f"{i}/2"], cwd=REPO, env=slow, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
    chunks = lambda: {p.name for p in (tmp_path / "sharded").glob("*.partial/chunks/*.json")}  # noqa: E731
    deadline = time.time() + 60
    while time.time() < deadline and not ({"00000000.json", "00000006.json"} <= chunks()):
        time.sleep(0.05)  # both shards (chunks 0-5 and 6-11 of 12) are writing
    os.killpg(procs[0].pid, signal.SIGKILL)
    procs[0].wait()
    assert procs[1].wait(120) == 0
    assert len([c for c in chunks() if int(c[:8]) < 6]) < 6, "the kill must land mid-shard"

    seal = subprocess.run(TOOL + [str(sharded), "--seal"], cwd=REPO, env=env, capture_output=True, text=True)
    assert seal.returncode == 2 and "shard 0/2 unfinished" in seal.stderr
    subprocess.run(TOOL + [str(sharded), "--shard", "0/2"], cwd=REPO, env=env, check=True, capture_output=True)
    subprocess.run(TOOL + [str(sharded), "--seal"], cwd=REPO, env=env, check=True, capture_output=True)

    single = _recipe(tmp_path, dataset, tmp_path / "single")
    subprocess.run(TOOL + [str(single)], cwd=REPO, env=env, check=True, capture_output=True)
    a, b = _only_cache(tmp_path / "sharded"), _only_cache(tmp_path / "single")
    assert a.name == b.name and _tree_bytes(a) == _tree_bytes(b)
    assert np.array_equal(np.load(a / "good.npy"), np.arange(24))


def test_each_rank_of_a_deepspeed_launch_builds_its_shard(dataset, tmp_path):
    """`deepspeed --num_gpus 2 tools/build_cache.py --shard auto`: rank r builds shard r/2; the seal equals one build."""
    from tests.training.conftest import deepspeed_cmd, env

    sharded = _recipe(tmp_path, dataset, tmp_path / "sharded")
    out = deepspeed_cmd(2, "tools/build_cache.py", "--no-progress", "--config", str(sharded), "--shard", "auto")
    assert "shard 0/2 (records 0-11) done" in out.stdout and "shard 1/2 (records 12-23) done" in out.stdout
    subprocess.run(TOOL + [str(sharded), "--seal"], cwd=REPO, env=env(), check=True, capture_output=True)
    single = _recipe(tmp_path, dataset, tmp_path / "single")
    subprocess.run(TOOL + [str(single)], cwd=REPO, env=env(), check=True, capture_output=True)
    assert _tree_bytes(_only_cache(tmp_path / "sharded")) == _tree_bytes(_only_cache(tmp_path / "single"))
