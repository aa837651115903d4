"""InfoNCE across two gloo ranks equals InfoNCE over the global batch, gradients included.

What DeepSpeed applies is the rank average of each rank's gradient, and a rank's loss depends on the
other ranks' embeddings through its softmax denominators: the test checks the averaged gradient against
the global batch's for every row of both modalities, with uneven batch sizes.
"""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from engine.models.contrastive import info_nce

N, D = 6, 8  # rank 0 holds 4 rows, rank 1 holds 2 (uneven last batches are allowed)


def _data():
    g = torch.Generator().manual_seed(0)
    return F.normalize(torch.randn(N, D, generator=g), dim=-1), F.normalize(torch.randn(N, D, generator=g), dim=-1)


def _worker(rank: int, port: int, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        image, text = _data()
        rows = slice(0, 4) if rank == 0 else slice(4, N)
        local_image = image[rows].clone().requires_grad_(True)
        local_text = text[rows].clone().requires_grad_(True)
        loss = info_nce(local_image, local_text, torch.tensor(5.0))
        loss.backward()
        torch.save((loss.item(), local_image.grad, local_text.grad), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gathered_info_nce_matches_the_global_batch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # spawn, not fork: a forked child inherits the parent's OpenMP pool and can hang in its first matmul
    mp.start_processes(_worker, args=(port, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    image, text = _data()
    image.requires_grad_(True)
    text.requires_grad_(True)
    logits = 5.0 * image @ text.T
    targets = torch.arange(N)
    global_loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    global_loss.backward()
    # the ranks' losses average to the global one, and so do their gradients (DeepSpeed's all-reduce mean)
    assert abs((results[0][0] + results[1][0]) / 2 - global_loss.item()) < 1e-5
    torch.testing.assert_close(torch.cat([results[0][1], results[1][1]]) / 2, image.grad)
    torch.testing.assert_close(torch.cat([results[0][2], results[1][2]]) / 2, text.grad)
