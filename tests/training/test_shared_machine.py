"""Jobs sharing a machine: a start-up blocked on another job's torch extension build says so."""
from __future__ import annotations

import fcntl
import logging
import os
import time

from engine.training.distributed import lock_held_elsewhere, report_extension_lock_wait


def test_a_build_lock_held_by_another_job_is_reported(tmp_path, caplog):
    lock = tmp_path / "lock"
    lock.write_text("")
    assert not lock_held_elsewhere(lock)
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what torch's FileLock does while another job builds the shm op
    try:
        with caplog.at_level(logging.WARNING), report_extension_lock_wait(lock, every_s=0.02):
            deadline = time.monotonic() + 10
            while "still waiting" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        os.close(fd)
    assert f"waiting for the lock {lock}: another job is building DeepSpeed's CPU shm op" in caplog.text
    assert "TORCH_EXTENSIONS_DIR" in caplog.text and "still waiting after" in caplog.text


def test_a_free_lock_says_nothing(tmp_path, caplog):
    lock = tmp_path / "lock"
    lock.write_text("")  # torch leaves the file behind after a build: only a held lock means waiting
    with caplog.at_level(logging.WARNING), report_extension_lock_wait(lock, every_s=0.01):
        time.sleep(0.05)
    with report_extension_lock_wait(None):
        pass
    assert "waiting" not in caplog.text


def test_sweeps_launch_deepspeed_on_a_free_port_unless_given_one():
    from engine.workflows.sweep import _with_free_port

    launched = _with_free_port(["/venv/bin/deepspeed", "--num_gpus", "2"])
    assert launched[:3] == ["/venv/bin/deepspeed", "--num_gpus", "2"] and launched[3] == "--master_port"
    assert int(launched[4]) != 29500
    assert _with_free_port(["deepspeed", "--master_port=29600"]) == ["deepspeed", "--master_port=29600"]
    assert _with_free_port(["python"]) == ["python"]
