"""Crash injection from the outside: SIGKILL a process just before its Nth registry system call.

The registry carries no test hook. Instead, `install` (called in a child process only: a forked
`procs` child, or a fresh interpreter started with `LAUNCHER`) wraps the calls through which a
registry write changes the disk or takes its lock:

* ``os.mkdir``, ``os.rename``, ``os.replace``, ``os.fsync``, ``os.write``, ``os.sendfile``
  (what ``shutil.copyfile`` copies with on Linux), and ``os.open`` when it may create or
  truncate a file;
* ``fcntl.flock``, which filelock and the preflight take and release the registry lock with;
* ``io.open`` / ``open`` for writing (``Path.write_text`` and ``shutil.copyfile`` go through
  them), and the ``close`` of a file so opened, which is when its buffered bytes reach the file.

Each such call on a path inside the registry folder is one step; for a call on a descriptor the
path is read from ``/proc/self/fd`` (Linux; these are tests only). Calls on the folder itself
are not steps: creating it when it exists and fsyncing its entries change nothing a SIGKILL
could leave behind, and the first of them comes before a write removes the leftovers of killed
runs, which the crash test requires of every run that took a step. With ``kill_at=N`` the
process kills itself with SIGKILL just before its Nth step, so the registry is left exactly as
the first N - 1 steps made it; without it the steps are only counted and recorded, for the pass
that learns how many steps a write has (and leaves the state after the last one: a finished
write). safetensors writes its files from Rust, out of reach
here, but "just before the next step" is the state right after such a write, and the timed
kills of the crash test land inside it.

Removals (``unlink``, ``rmdir``) are not steps: they only clean up leftovers of killed runs
before a write starts, and the crash test requires that those be gone after every later run.
"""

from __future__ import annotations

import builtins
import fcntl
import io
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LAUNCHER = (
    "import sys\n"
    "from tests import crashing\n"
    "crashing.install(sys.argv[1], kill_at=int(sys.argv[2]), start=sys.argv[3] or None)\n"
    "from intent_ci.cli import main\n"
    "sys.exit(main(sys.argv[4:]))\n"
)
"""``python -c LAUNCHER ROOT N START ARGS...``: run the CLI in a fresh interpreter, killed before
its Nth step on ROOT (counted from the first whose description contains START, if not empty).
Needs the repository on ``PYTHONPATH``."""

_WRITE_MODES = set("wax+")
_CREATE_FLAGS = os.O_CREAT | os.O_TRUNC


@dataclass
class Steps:
    """The steps a process has taken on one registry folder (see the module docstring)."""

    root: str
    kill_at: int | None
    start: str | None
    taken: list[str] = field(default_factory=list)
    started: bool = False


_installed: Steps | None = None


def install(
    root: str | os.PathLike[str], *, kill_at: int | None = None, start: str | None = None
) -> Steps:
    """Wrap the system calls of this process; return the record of its steps on `root`.

    Call it in a child process only: the wrappers stay for the life of the process.

    Args:
        root: the registry folder; calls on paths outside it pass through uncounted.
        kill_at: SIGKILL just before this step (1 is the first); None counts only.
        start: count steps only from the first whose description contains this text (e.g.
            ``".staging-"`` to skip a preflight and start at the release write's staging folder).
    """
    global _installed
    if _installed is not None:
        raise RuntimeError("crashing.install: already installed in this process")
    steps = _installed = Steps(os.path.realpath(root), kill_at, start, started=start is None)
    prefix = steps.root + os.sep

    def where(path: Any, dir_fd: int | None = None) -> str | None:
        """The name of `path` (a path or a descriptor) in the registry, or None if not in it."""
        try:
            if isinstance(path, int):
                full = os.readlink(f"/proc/self/fd/{path}")
            else:
                full = os.fsdecode(os.fspath(path))
                if dir_fd is not None and not os.path.isabs(full):
                    full = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), full)
                full = os.path.realpath(full)
        except (OSError, TypeError, ValueError):
            return None
        return full[len(prefix) :] if full.startswith(prefix) else None

    def step(what: str) -> None:
        if not steps.started:
            if steps.start is None or steps.start not in what:
                return
            steps.started = True
        steps.taken.append(what)
        if len(steps.taken) == steps.kill_at:
            # Through the stream, not os.write (wrapped); the parent reads it from the pipe.
            sys.stderr.write(f"\ncrashing: SIGKILL before step {steps.kill_at}: {what}\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def on_path(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(path: Any, *args: Any, **kwargs: Any) -> Any:
            if (rel := where(path, kwargs.get("dir_fd"))) is not None:
                step(f"{name}({rel})")
            return call(path, *args, **kwargs)

        return wrapped

    def on_fd(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(fd: Any, *args: Any, **kwargs: Any) -> Any:
            number = fd if isinstance(fd, int) else fd.fileno()
            if (rel := where(number)) is not None:
                step(f"{name}({rel})")
            return call(fd, *args, **kwargs)

        return wrapped

    def on_move(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(src: Any, dst: Any, **kwargs: Any) -> Any:
            old = where(src, kwargs.get("src_dir_fd"))
            new = where(dst, kwargs.get("dst_dir_fd"))
            if old is not None or new is not None:
                step(f"{name}({old} -> {new})")
            return call(src, dst, **kwargs)

        return wrapped

    real_open = os.open

    def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & _CREATE_FLAGS and (rel := where(path, kwargs.get("dir_fd"))) is not None:
            step(f"os.open({rel}, create)")
        return real_open(path, flags, *args, **kwargs)

    real_io_open = io.open

    def io_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        rel = where(file) if _WRITE_MODES & set(mode) else None
        if rel is None:
            return real_io_open(file, mode, *args, **kwargs)
        step(f"open({rel}, {mode!r})")
        return _Written(real_io_open(file, mode, *args, **kwargs), lambda: step(f"close({rel})"))

    real_flock = fcntl.flock

    def flock(fd: Any, operation: int) -> None:
        number = fd if isinstance(fd, int) else fd.fileno()
        if (rel := where(number)) is not None:
            step(f"flock({rel}, {'unlock' if operation & fcntl.LOCK_UN else 'lock'})")
        return real_flock(fd, operation)

    os.mkdir = on_path("os.mkdir", os.mkdir)
    os.rename = on_move("os.rename", os.rename)
    os.replace = on_move("os.replace", os.replace)
    os.fsync = on_fd("os.fsync", os.fsync)
    os.write = on_fd("os.write", os.write)
    os.sendfile = on_fd("os.sendfile", os.sendfile)
    os.open = os_open
    fcntl.flock = flock
    io.open = builtins.open = io_open
    return steps


class _Written:
    """A file opened for writing, whose `close` is a step (the file object itself is C code)."""

    def __init__(self, file: Any, before_close: Callable[[], None]) -> None:
        self._file, self._before_close = file, before_close

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def __iter__(self) -> Any:
        return iter(self._file)

    def __enter__(self) -> _Written:
        self._file.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if not self._file.closed:
            self._before_close()
        self._file.close()
