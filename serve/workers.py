"""Perception for the gateway, in worker processes it can stop.

A thread cannot be stopped: a timed-out request whose perception ran in a thread kept a core busy
for minutes while its concurrency slot let the next request in beside it. Here each slot is a
process. A job that outlives its deadline (or whose request is cancelled) is SIGKILLed and awaited
before its slot is given back, so the next request never shares the CPU with abandoned work; a
fresh process takes the slot. Workers die with the gateway (mellm.procs.die_with_parent).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor


class PerceptionTimeout(Exception):
    """The job ran past its deadline; its process was killed."""


class WorkerCrashed(Exception):
    """The worker process died during the job (killed by the OS for memory, say)."""


def _serve(conn, parent_pid: int) -> None:
    from mellm.procs import die_with_parent

    die_with_parent(signal.SIGKILL, parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the gateway, which stops us
    import cv2

    import mellm.analyze  # noqa: F401  (imported before the first job, not during it)
    from mellm.face import load_face_models

    cv2.setNumThreads(1)
    load_face_models()
    conn.send(("ready", None))  # start-up (seconds on a busy machine) is not counted against a job
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", fn(*args))
        except Exception as e:  # sent back and raised in the gateway, as it would be in-process
            reply = ("error", e)
        try:
            conn.send(reply)
        except Exception as e:  # an exception that does not pickle
            conn.send(("error", RuntimeError(f"{type(reply[1]).__name__}: {reply[1]}; ({e})")))


class _Worker:
    def __init__(self, context):
        self.conn, child = context.Pipe()
        self.proc = context.Process(target=_serve, args=(child, os.getpid()), daemon=True, name="mellm-perception")
        self.proc.start()
        child.close()
        self.ready = False

    def kill(self) -> None:
        """SIGKILL and wait until the process is gone (reaped), so its CPU and memory are free."""
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(10)
        self.conn.close()


class PerceptionWorkers:
    """`n` worker processes; `await run(fn, args, timeout)` runs `fn(*args)` in an idle one (`fn` a
    module-level function, `args` and the result picklable).

    Start and stop it from the event loop's thread: the kernel's parent-death signal follows the
    thread that started a process, and the loop's thread lives as long as the gateway."""

    def __init__(self, n: int, start_timeout_s: float = 600.0):
        self.n, self.start_timeout_s = n, start_timeout_s
        self._context = multiprocessing.get_context("spawn")  # no fork of a threaded server
        self._idle: asyncio.Queue[_Worker] | None = None
        self._all: set[_Worker] = set()
        self._waiters = ThreadPoolExecutor(max_workers=n, thread_name_prefix="gateway-wait")
        self.killed = 0  # jobs stopped at their deadline or on cancellation

    def start(self) -> None:
        self._idle = asyncio.Queue()
        for _ in range(self.n):
            self._idle.put_nowait(self._spawn())

    def _spawn(self) -> _Worker:
        w = _Worker(self._context)
        self._all.add(w)
        return w

    def _replace(self, w: _Worker) -> _Worker:
        w.kill()
        self._all.discard(w)
        return self._spawn()

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._all]

    async def run(self, fn, args: tuple, timeout: float):
        assert self._idle is not None, "PerceptionWorkers.start() was not called"
        w = await self._idle.get()
        done = threading.Event()
        try:
            if not w.ready:  # a fresh process still importing: like waiting in the queue, not part of the job's time
                if not await asyncio.get_running_loop().run_in_executor(self._waiters, _wait, w.conn,
                                                                        self.start_timeout_s, done):
                    w = self._replace(w)
                    raise WorkerCrashed(f"a perception process did not start within {self.start_timeout_s:g} s")
                try:
                    w.conn.recv()
                except (EOFError, OSError):
                    code = w.proc.exitcode
                    w = self._replace(w)
                    raise WorkerCrashed(f"a perception process died while starting (exit code {code})") from None
                w.ready = True
            w.conn.send((fn, args))
            ready = await asyncio.get_running_loop().run_in_executor(self._waiters, _wait, w.conn, timeout, done)
            if not ready:
                self.killed += 1
                w = self._replace(w)
                raise PerceptionTimeout(f"perception took longer than {timeout:g} s")
            try:
                status, value = w.conn.recv()
            except (EOFError, OSError):
                code = w.proc.exitcode
                w = self._replace(w)
                raise WorkerCrashed(f"the perception process died (exit code {code})") from None
        except asyncio.CancelledError:  # the request timed out or went away: stop its work now
            done.set()
            self.killed += 1
            w = self._replace(w)
            raise
        except BaseException:
            done.set()
            raise
        finally:
            self._idle.put_nowait(w)
        if status == "error":
            raise value
        return value

    def close(self) -> None:
        for w in list(self._all):
            w.kill()
        self._all.clear()
        self._waiters.shutdown(wait=False, cancel_futures=True)


def _wait(conn, timeout: float, cancelled: threading.Event) -> bool:
    """True when the worker answered (or died) within `timeout`; polls in short steps so that a
    cancelled request frees this thread at once."""
    import time

    deadline = time.monotonic() + timeout
    while not cancelled.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            if conn.poll(min(left, 0.2)):
                return True
        except (EOFError, OSError):
            return True
    return False
