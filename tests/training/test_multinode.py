"""Two "nodes" on one machine: two DeepSpeed launchers (`--no_ssh --node_rank 0/1`, one CPU rank each) form one job.

It must train exactly as one node with two ranks does: the ranks, their shards and the collectives are the same;
only who starts the processes differs. This is the launch a scheduler such as SLURM makes (one launcher per node).
With `run.shared_fs=false` each node keeps its run folder on its own disk (here: two folders), written by its local
rank 0, and the job still resumes exactly.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from engine.training.checkpoint import read_layout
from tests.training.conftest import DEEPSPEED, ROOT, deepspeed_cmd, env, free_port, module_weights
from tests.training.test_launcher import read_records

ARGS = ["--train.epochs=2", "--optim.lr=0.003", "--loader.batch_size=4", "--train.max_steps_per_epoch=3"]


def launch_two_nodes(args: list[list[str]], tmp: Path, ok: bool = True) -> list[str]:
    """Node ``i`` runs engine/train.py with ``args[i]``; returns each node's output."""
    hostfile = tmp / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")  # names only label the nodes: --no_ssh starts nothing remotely
    port = str(free_port())
    procs = [subprocess.Popen([DEEPSPEED, "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(rank),
                               "--num_nodes", "2", "--num_gpus", "1", "--master_addr", "127.0.0.1", "--master_port", port,
                               "engine/train.py", *args[rank]], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for rank, (p, out) in enumerate(zip(procs, outs)):
        assert (p.returncode == 0) == ok, f"node {rank} ended with {p.returncode}:\n{out[-5000:]}"
    return outs


@pytest.fixture(scope="module")
def one_node(tiny_overrides, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one_node")
    deepspeed_cmd(2, "engine/train.py", "--config", "configs/demo.yaml", *tiny_overrides, f"--run.output_dir={out}",
                  "--run.name=run", *ARGS)
    return out / "run"


def equal_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_nodes_equal_one_node_with_two_ranks(one_node, tiny_overrides, tmp_path):
    common = ["--config", "configs/demo.yaml", *tiny_overrides, f"--run.output_dir={tmp_path}", *ARGS]
    launch_two_nodes([[*common, "--run.name=two_nodes"]] * 2, tmp_path)
    two = tmp_path / "two_nodes"
    assert equal_weights(module_weights(one_node), module_weights(two))
    assert [r["val_loss"] for r in read_records(one_node)] == [r["val_loss"] for r in read_records(two)]
    assert (two / "config.yaml").read_text().count("world_size: 2") == 1
    # per-rank state is each rank's own file; everything else in the run folder is written once (by global rank 0)
    assert sorted(p.name for p in (two / "checkpoints" / "last").glob("rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]


def test_node_local_run_folders_resume_exactly(one_node, tiny_overrides, tmp_path):
    """run.shared_fs=false, each node its own folder: killed after epoch 1 and resumed, the job ends where one node
    with two ranks ends. Each folder holds its own node's files only, written by that node's one writer."""
    folders = [tmp_path / "disk0", tmp_path / "disk1"]
    args = [["--config", "configs/demo.yaml", *tiny_overrides, f"--run.output_dir={f}", "--run.name=run",
             "--run.shared_fs=false", *ARGS] for f in folders]
    launch_two_nodes([[*a, "--stop-after-epoch=1"] for a in args], tmp_path)
    launch_two_nodes([[*a, "--resume"] for a in args], tmp_path)
    node0, node1 = (f / "run" for f in folders)
    reference = module_weights(one_node)
    assert equal_weights(reference, module_weights(node0)) and equal_weights(reference, module_weights(node1))
    assert [r["val_loss"] for r in read_records(one_node)] == [r["val_loss"] for r in read_records(node0)]
    for rank, run in enumerate((node0, node1)):
        last = run / "checkpoints" / "last"
        assert [p.name for p in last.glob("rng_rank*.pt")] == [f"rng_rank{rank}.pt"]  # only this node's ranks
        assert (last / "mp_rank_00_model_states.pt").is_file() and (run / "checkpoints" / "best" / "model.safetensors").is_file()
        assert not read_layout(run / "checkpoints", "last").shared_fs
        assert (run / "config.yaml").is_file() and not list(run.glob(".writer-probe-*"))
    assert not (node1 / "metrics.jsonl").exists()  # the results are written once, on global rank 0's node


@pytest.mark.parametrize("shared_fs, folders, message", [
    ("true", ("disk0", "disk1"), "the run folder is not shared between the nodes; set run.shared_fs=false"),
    ("false", ("shared", "shared"), "is one folder shared by several nodes (rank 0 sees the files of ranks [0, 1], "
                                    "each its node's writer): set run.shared_fs=true"),
], ids=["node-local-folders-said-shared", "shared-folder-said-node-local"])
def test_a_wrong_run_shared_fs_is_refused_on_every_node(tiny_overrides, tmp_path, shared_fs, folders, message):
    """Said shared, each node writes a folder of its own: node 1 would have nothing to resume from. Said node-local,
    the folder is shared: both nodes' writers would rename the same checkpoint. The start stops on both nodes."""
    args = [["--config", "configs/demo.yaml", *tiny_overrides, f"--run.output_dir={tmp_path / f}",
             f"--run.shared_fs={shared_fs}", *ARGS] for f in folders]
    for out in launch_two_nodes(args, tmp_path, ok=False):
        assert message in out
