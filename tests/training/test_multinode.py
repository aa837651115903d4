"""Two "nodes" on one machine: two DeepSpeed launchers (`--no_ssh --node_rank 0/1`, one CPU rank each) form one job.

It must train exactly as one node with two ranks does: the ranks, their shards and the collectives are the same;
only who starts the processes differs. This is the launch a scheduler such as SLURM makes (one launcher per node).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import torch

from tests.training.conftest import DEEPSPEED, ROOT, deepspeed_cmd, env, free_port, module_weights
from tests.training.test_launcher import read_records

ARGS = ["--train.epochs=2", "--optim.lr=0.003", "--loader.batch_size=4", "--train.max_steps_per_epoch=3"]


def launch_two_nodes(args: list[str], tmp: Path) -> None:
    hostfile = tmp / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")  # names only label the nodes: --no_ssh starts nothing remotely
    port = str(free_port())
    procs = [subprocess.Popen([DEEPSPEED, "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(rank),
                               "--num_nodes", "2", "--num_gpus", "1", "--master_addr", "127.0.0.1", "--master_port", port,
                               "engine/train.py", *args], cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for rank in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for rank, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"node {rank} failed ({p.returncode}):\n{out[-5000:]}"


def test_two_nodes_equal_one_node_with_two_ranks(tiny_overrides, tmp_path):
    common = ["--config", "configs/demo.yaml", *tiny_overrides, f"--run.output_dir={tmp_path}", *ARGS]
    deepspeed_cmd(2, "engine/train.py", *common, "--run.name=one_node")
    launch_two_nodes([*common, "--run.name=two_nodes"], tmp_path)
    one, two = tmp_path / "one_node", tmp_path / "two_nodes"
    a, b = module_weights(one), module_weights(two)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val_loss"] for r in read_records(one)] == [r["val_loss"] for r in read_records(two)]
    assert (two / "config.yaml").read_text().count("world_size: 2") == 1
    # per-rank state is each rank's own file; everything else in the run folder is written once (by global rank 0)
    assert sorted(p.name for p in (two / "checkpoints" / "last").glob("rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]
