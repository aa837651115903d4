"""Contrastive losses across two gloo ranks equal the losses over the global batch, gradients included.

What DeepSpeed applies is the rank average of each rank's gradient, and a rank's loss depends on the
other ranks' embeddings through its softmax denominators (InfoNCE) or its pairs (sigmoid): the test checks
the averaged gradient against the global batch's for every row of both modalities, the temperature and the
bias, with uneven batch sizes, for InfoNCE, the sigmoid loss, and both with a queue (hard negatives on).
"""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from engine.training.losses import info_nce, sigmoid_loss

N, D, K = 6, 8, 3  # rank 0 holds 4 rows, rank 1 holds 2 (uneven last batches are allowed)
CASES = {
    "info_nce": lambda i, t, s, b, q: info_nce(i, t, s),
    "sigmoid": lambda i, t, s, b, q: sigmoid_loss(i, t, s, b),
    "info_nce_queue_weighted": lambda i, t, s, b, q: info_nce(i, t, s, *q, hard_negatives="weighted", beta=0.5, tau_plus=0.1),
    "info_nce_queue_semihard": lambda i, t, s, b, q: info_nce(i, t, s, *q, hard_negatives="semihard"),
    "sigmoid_queue": lambda i, t, s, b, q: sigmoid_loss(i, t, s, b, *q),
}


def _data():
    g = torch.Generator().manual_seed(0)
    unit = lambda n: F.normalize(torch.randn(n, D, generator=g), dim=-1)  # noqa: E731
    return unit(N), unit(N), (unit(K), unit(K))


def _leaves():
    return torch.tensor(5.0, requires_grad=True), torch.tensor(-2.0, requires_grad=True)


def _worker(rank: int, port: int, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        image, text, queue = _data()
        rows = slice(0, 4) if rank == 0 else slice(4, N)
        results = {}
        for name, loss_fn in CASES.items():
            local_image = image[rows].clone().requires_grad_(True)
            local_text = text[rows].clone().requires_grad_(True)
            scale, bias = _leaves()
            loss = loss_fn(local_image, local_text, scale, bias, queue)
            loss.backward()
            results[name] = (loss.item(), local_image.grad, local_text.grad, scale.grad, bias.grad)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gathered_losses_match_the_global_batch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # spawn, not fork: a forked child inherits the parent's OpenMP pool and can hang in its first matmul
    mp.start_processes(_worker, args=(port, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name, loss_fn in CASES.items():
        image, text, queue = _data()
        image.requires_grad_(True)
        text.requires_grad_(True)
        scale, bias = _leaves()
        global_loss = loss_fn(image, text, scale, bias, queue)
        global_loss.backward()
        r0, r1 = ranks[0][name], ranks[1][name]
        # the ranks' losses average to the global one, and so do their gradients (DeepSpeed's all-reduce mean)
        assert abs((r0[0] + r1[0]) / 2 - global_loss.item()) < 1e-5, name
        torch.testing.assert_close(torch.cat([r0[1], r1[1]]) / 2, image.grad, msg=name)
        torch.testing.assert_close(torch.cat([r0[2], r1[2]]) / 2, text.grad, msg=name)
        torch.testing.assert_close((r0[3] + r1[3]) / 2, scale.grad, msg=name)
        if bias.grad is not None:
            torch.testing.assert_close((r0[4] + r1[4]) / 2, bias.grad, msg=name)


def test_plain_info_nce_is_clip_loss():
    image, text, _ = _data()
    logits = 5.0 * image @ text.T
    targets = torch.arange(N)
    expected = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    torch.testing.assert_close(info_nce(image, text, torch.tensor(5.0)), expected)
