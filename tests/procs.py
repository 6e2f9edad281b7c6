"""Run a function in a forked child process: real processes, without re-importing torch.

The crash, concurrency and file-size-limit tests need many short-lived processes that do real
registry writes. Starting a fresh interpreter costs seconds (torch, transformers); a fork of
the test process costs milliseconds and runs exactly the same library code. The child sets
torch to one thread (as PyTorch's own forked DataLoader workers do), sends its stdout and
stderr through a pipe, and leaves with ``os._exit`` so no pytest machinery runs twice.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Child:
    """How a forked child ended."""

    status: int
    output: str

    @property
    def killed(self) -> bool:
        return os.WIFSIGNALED(self.status) and os.WTERMSIG(self.status) == signal.SIGKILL

    @property
    def exit_code(self) -> int | None:
        return os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else None


def start(
    target: Callable[[], int | None],
    *,
    before: Callable[[], None] | None = None,
) -> tuple[int, int]:
    """Fork a child that runs `target` and exits with its return value; return (pid, read fd).

    Args:
        target: what the child runs; an exception exits with status 3 after printing it.
        before: run in the child first (e.g. to set a resource limit, or to install
            `tests.crashing` so the child SIGKILLs itself at one step of a registry write).
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        return pid, read_fd
    code = 3
    try:
        os.close(read_fd)
        stream = io.TextIOWrapper(os.fdopen(write_fd, "wb"), line_buffering=True)
        sys.stdout = sys.stderr = stream
        torch.set_num_threads(1)
        if before is not None:
            before()
        code = int(target() or 0)
    except BaseException:  # the child reports everything through its pipe
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
        finally:
            os._exit(code)


def finish(pid: int, read_fd: int, *, kill_after_s: float | None = None) -> Child:
    """Wait for a child started by `start`; SIGKILL it after `kill_after_s` if given."""
    if kill_after_s is not None:
        time.sleep(kill_after_s)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    return Child(status, b"".join(chunks).decode("utf-8", "replace"))


def run(target: Callable[[], int | None], **kwargs) -> Child:
    """`start` then `finish`: run `target` in a forked child and wait for it."""
    kill_after_s = kwargs.pop("kill_after_s", None)
    pid, read_fd = start(target, **kwargs)
    return finish(pid, read_fd, kill_after_s=kill_after_s)
