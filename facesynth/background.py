"""Run one function in a forked child process while this process goes on (Linux), and take its result later.

``refine sfs PHOTO`` detects the face in a child (reading the photo and loading dlib's models, about 1 s, hold
Python's lock, so a thread would not run beside them) while the parent imports the stages and loads the
models: on two cores the two overlap. The result and any exception come back pickled through a pipe.
"""
from __future__ import annotations

import os
import pickle
import select
import sys
import traceback
from typing import Any, Callable


def fork_available() -> bool:
    """Whether :class:`Background` forks here (Linux: ``os.fork`` of a process that has loaded only
    thread-safe libraries so far; elsewhere it runs the function at :meth:`Background.result`)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


class Background:
    """``fn(*args)`` in a forked child, started now; :meth:`result` waits for it.

    The child sends back the return value or the exception it raised (with its traceback as a note), pickled;
    it ends with ``os._exit``, so nothing of the parent's (buffers, ``atexit``) runs twice. A child that dies
    without an answer (a crash in a library) is run again in this process by :meth:`result`, which then
    fails or succeeds as the call would have without a child. Without fork (:func:`fork_available`, or
    ``fork`` False) the call runs in :meth:`result`.

    Use as a context manager, or call :meth:`close`: a child still running when the parent fails is ended.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any, fork: bool = True):
        self._fn, self._args = fn, args
        self._pid: int | None = None
        self._read: int | None = None
        self.forked = False  # whether a child runs (or ran) the call
        if not (fork and fork_available()):
            return
        sys.stdout.flush()
        sys.stderr.flush()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            os.close(read)
            _answer(write, fn, args)
        os.close(write)
        self._pid, self._read, self.forked = pid, read, True

    def result(self, timeout: float | None = None) -> Any:
        """The call's return value; its exception is raised here. A child that has not answered within
        ``timeout`` seconds (None: no limit) is ended and the call runs here instead (a library's lock or thread
        pool that did not survive the fork can make a child wait forever)."""
        if self._read is None:
            return self._fn(*self._args)
        if timeout is not None and not select.select([self._read], [], [], timeout)[0]:
            self.close()
            return self._fn(*self._args)
        with os.fdopen(self._read, "rb") as f:
            self._read = None
            data = f.read()
        self._reap()
        if not data:  # the child died without an answer: the call again, here, as it would run without a child
            return self._fn(*self._args)
        ok, value = pickle.loads(data)
        if ok:
            return value
        raise value

    def close(self) -> None:
        """End the child if it still runs (the parent failed before it took the result)."""
        if self._read is not None:
            os.close(self._read)
            self._read = None
        if self._pid is not None:
            try:
                os.kill(self._pid, 9)
            except ProcessLookupError:
                pass
            self._reap()

    def _reap(self) -> None:
        if self._pid is not None:
            try:
                os.waitpid(self._pid, 0)
            except ChildProcessError:
                pass
            self._pid = None

    def __enter__(self) -> "Background":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _answer(write: int, fn: Callable[..., Any], args: tuple) -> None:
    """The child: run the call, send ``(True, value)`` or ``(False, exception)`` pickled, and exit."""
    try:
        try:
            payload = (True, fn(*args))
        except BaseException as e:  # noqa: BLE001  every error goes to the parent, which raises it
            if hasattr(e, "add_note"):
                e.add_note("in the background process:\n" + traceback.format_exc().rstrip())
            payload = (False, e)
        try:
            data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001  a value or exception that does not pickle: its text
            what = payload[1] if not payload[0] else e
            data = pickle.dumps((False, RuntimeError(f"{type(what).__name__}: {what}")))
        with os.fdopen(write, "wb") as f:
            f.write(data)
    finally:
        os._exit(0)
