"""The Python API; the CLI is a thin layer over it."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from . import backends
from .errors import DetainError
from .job import Job
from .policy import Policy
from .result import Result

TYPE_CHECKING = False  # not typing's: importing typing slows every CLI start-up
if TYPE_CHECKING:
    import queue
    from typing import Any

    from .backends.base import Started
    from .host.zygote import Zygote

Sink = Callable[[bytes], None]


class Sandbox:
    """A policy bound to a backend; each `run` still gets a fresh, disposable sandbox.

    >>> box = Sandbox(Policy().merge({"timeout": 5}, "example"))
    >>> box.run(Job.code("print('hi')")).stdout
    b'hi\\n'

    With `warm=N` the sandbox keeps N spares started ahead, confined and with the
    interpreter up, each waiting for one job: a run takes one and a background thread
    starts its replacement, so a run costs little more than its job. A spare is never
    used twice, and nothing of one run reaches another. On bwrap (as root) and landlock a
    spare is forked by the Sandbox's zygote (host/zygote.py), an interpreter kept up that
    never runs a job, and confines itself before it reads its job; other backends and
    policies start each spare whole. Spares start on several threads at once, and at
    least as many are kept as there are callers in `run` at once. Every process of a run is dead
    when `run` returns; its directory, mounts and cgroup dirs are removed on that thread
    just after. Close the Sandbox (or use it as a context manager) to remove the spares
    and wait for those removals; a detain killed meanwhile leaves them to the next start's
    sweep, like any other run.
    """

    def __init__(self, policy: Policy | None = None, *, backend: str | None = None,
                 warm: int = 0) -> None:
        self.policy = policy or Policy()
        if backend is not None:
            self.policy = self.policy.merge({"backend": backend}, "Sandbox(backend=...)")
        self.backend, self.choice = backends.choose_for(self.policy)
        self.warm = 0
        self._spares: list[Started] = []
        self._state = threading.Condition()
        self._closed = False
        self._pending = 0  # spares being started on the spawner threads
        self._callers = self._peak_callers = 0  # callers in run() now, and most at once
        self._zygote: Zygote | None = None
        self._zygote_lock = threading.Lock()
        self.zygote_error: BaseException | None = None  # why spares start whole instead
        self._removing = 0  # finished runs whose remains are being removed there
        self.warm_error: BaseException | None = None  # why the last spare failed to start
        self.cleanup_error: BaseException | None = None
        if warm:
            self.keep_warm(warm)

    def keep_warm(self, spares: int) -> None:
        """Keep `spares` sandboxes started ahead from now on (0: none)."""
        if spares and not self.backend.warm:
            raise DetainError(f"the {self.backend.name} backend cannot start a sandbox "
                              "before its job, so it keeps no warm spares; use warm=0, or "
                              "a backend such as bwrap, landlock or process")
        self.warm = max(0, int(spares))
        self._keep_warm()

    def run(self, job: Job, *, stdout: Sink | None = None, stderr: Sink | None = None,
            cancel: int | None = None) -> Result:
        """Run one job; `stdout`/`stderr` receive output live (already capped). `cancel`
        is an fd whose readiness ends the run early (a client that went away)."""
        if self._closed:
            raise DetainError("this Sandbox was closed; create a new one")
        with self._state:
            self._callers += 1
            self._peak_callers = max(self._peak_callers, self._callers)
        try:
            started = self._take_spare()
            if started is None:
                started = self.backend.start(self.policy, None if self.backend.warm else job)
                self.warm_error = None  # this one started: spares may start again
        except BaseException:
            self._leave()
            raise
        try:
            result = self.backend.finish(started, job, stdout=stdout, stderr=stderr,
                                         cancel=cancel, defer=self._defer if self.warm else None)
        finally:
            self._leave()
            self._keep_warm()  # after the run: a spare starting beside it would slow it
        result.backend_choice = self.choice.describe()
        return result

    def _leave(self) -> None:
        with self._state:
            self._callers -= 1

    @property
    def _wanted(self) -> int:
        """Spares to keep: as asked, and never fewer than the callers seen at once. A
        zygote's spares cost a fork each but take a while to confine (cgroup v1 joins wait
        for RCU grace periods), so with several callers at once more are kept in flight
        per caller: they never wait for one while the CPUs have time to make them."""
        if not self.warm:
            return 0
        several = self._zygote is not None and self._peak_callers > 1
        return max(self.warm, (ZYGOTE_SPARES if several else 1) * self._peak_callers)

    def wait_warm(self, timeout: float = 30.0) -> bool:
        """Block until every spare is ready and the last runs' remains are removed (True),
        or starting a spare failed (`warm_error` says why), or `timeout` passed."""
        self._keep_warm()
        with self._state:
            self._state.wait_for(
                lambda: self._closed or (not self._removing and (
                    len(self._spares) >= self._wanted
                    or (self.warm_error is not None and not self._pending))), timeout)
            return (len(self._spares) >= self._wanted and not self._removing
                    and not self._closed)

    def close(self) -> None:
        """Remove the spares and the last runs' remains, and stop starting new spares.

        Raises DetainError when removing some remains failed (the next start's sweep
        retries them)."""
        with self._state:
            self._closed = True
            spares, self._spares = self._spares, []
        for spare in spares:
            self.backend.discard(spare)
        with self._state:  # a spare being started now is discarded when it is ready
            self._state.wait_for(lambda: not self._pending and not self._removing)
            error, self.cleanup_error = self.cleanup_error, None
        zygote, self._zygote = self._zygote, None
        if zygote is not None:
            zygote.close()
        if error is not None:
            raise DetainError(str(error))

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take_spare(self) -> Started | None:
        """A ready spare; one still starting is waited for, as it is ready sooner than a
        sandbox started now would be."""
        if not self.warm:
            return None
        self._keep_warm()
        with self._state:
            self._state.wait_for(lambda: self._spares or not self._pending, SPARE_WAIT)
            spare = self._spares.pop(0) if self._spares else None
        if spare is not None and spare.proc.poll() is not None:
            self._defer(lambda: self.backend.discard(spare))  # died waiting (OOM killer…)
            return None
        if spare is not None and self._zygote is not None:
            # A fork's replacement costs the run little, and confining it takes longer
            # than a short job: it starts now, not after the run.
            self._keep_warm()
        return spare

    def _keep_warm(self) -> None:
        """Start as many spares as are missing; none while starting them fails (a run
        started cold then reports why, and its success lets spares start again)."""
        with self._state:
            if self._closed or self.warm_error is not None:
                return
            wanted = self._wanted - len(self._spares) - self._pending
            self._pending += max(0, wanted)
            first = self._pending - max(0, wanted)
        for index in range(first, first + wanted):  # in parallel, one per spawner thread
            _worker(f"spawner-{index % SPAWNERS}").put(self._start_spare)

    def _defer(self, remove: Callable[[], None]) -> None:
        """Remove a finished run's remains on the remover thread, after its result."""
        def task() -> None:
            try:
                remove()
            except Exception as exc:  # kept for close(); the sweep retries what is left
                with self._state:
                    self.cleanup_error = exc
            finally:
                with self._state:
                    self._removing -= 1
                    self._state.notify_all()

        with self._state:
            self._removing += 1
        _worker("remover").put(task)

    def _start_spare(self) -> None:
        try:
            zygote = self._zygote_for_spares()
            spare = self.backend.start(self.policy, forker=zygote and zygote.fork)
        except BaseException as exc:  # a run started cold reports it in full
            with self._state:
                self.warm_error = exc
                self._pending -= 1
                self._state.notify_all()
            return
        with self._state:
            if not self._closed:
                self._pending -= 1
                self.warm_error = None
                self._spares.append(spare)
                self._state.notify_all()
                return
        try:  # closed meanwhile: close() waits until this spare is gone too
            self.backend.discard(spare)
        finally:
            with self._state:
                self._pending -= 1
                self._state.notify_all()


    def zygote(self) -> Zygote | None:
        """The zygote that forks this Sandbox's spares, started now if needed (on a spawner
        thread), or None where none serves its backend and policy (`zygote_error` says
        why when one failed to start)."""
        import queue  # here: only warm Sandboxes use queues, a cold run need not import it

        done: queue.SimpleQueue = queue.SimpleQueue()
        _worker("spawner-0").put(lambda: done.put(self._zygote_for_spares()))
        return done.get()

    def _zygote_for_spares(self) -> Zygote | None:
        """The Sandbox's zygote, started on first use (on a spawner thread, which outlives
        it: its runs die with that thread); None where it does not serve this policy or
        could not start (`zygote_error` says why: spares then start whole)."""
        with self._zygote_lock:
            if self._zygote is not None and self._zygote.alive():
                return self._zygote
            if self._zygote is not None:  # died (OOM killer…): its runs died with it
                self._zygote.close()
                self._zygote = None
            from .host import zygote

            mode = None if self.zygote_error else zygote.mode_for(self.backend, self.policy)
            if mode is None or self._closed:
                return None
            try:
                self._zygote = zygote.Zygote(self.backend, self.policy, mode)
            except (DetainError, OSError) as exc:
                self.zygote_error = exc
            return self._zygote


SPARE_WAIT = 30.0  # seconds a run waits for a spare being started before starting its own
SPAWNERS = 8  # threads starting spares at once (a spare mostly waits while it starts)
ZYGOTE_SPARES = 4  # spares kept per concurrent caller where a zygote forks them
_WORKERS: dict[str, queue.SimpleQueue] = {}
_WORKERS_LOCK = threading.Lock()


def _worker(name: str) -> queue.SimpleQueue:
    """A thread alive as long as the process, running the tasks put on its queue.

    Every spare is started by a "spawner-N": a sandbox gets its parent-death signal when
    the *thread* that started it ends (bwrap's --die-with-parent, detain's own
    PR_SET_PDEATHSIG; a zygote's runs, cloned as detain's children, that of the thread
    that started the zygote), so it must be a thread that outlives its spares. There
    are SPAWNERS of them, so spares start in parallel. The "remover" clears finished
    runs' remains beside them, so neither waits for the other.
    """
    import queue

    with _WORKERS_LOCK:
        if name not in _WORKERS:
            tasks: queue.SimpleQueue = queue.SimpleQueue()

            def serve() -> None:
                while True:
                    tasks.get()()

            threading.Thread(target=serve, name=f"detain-{name}", daemon=True).start()
            _WORKERS[name] = tasks
        return _WORKERS[name]


def run(script: str | os.PathLike | None = None, *args: str, code: str | None = None,
        module: str | None = None, stdin: bytes | None = None, policy: Policy | None = None,
        **settings: Any) -> Result:
    """Run a script, a code string or a module in a sandbox and return its Result.

    `settings` use the policy-file vocabulary: `backend="bwrap"`, `timeout=5`,
    `memory="256M"`, `min_level=1`, `copy_out=["out:/tmp/results"]` and so on.
    """
    chosen = [x is not None for x in (script, code, module)]
    if sum(chosen) != 1:
        raise DetainError("pass exactly one of a script path, code= or module=")
    if script is not None:
        job = Job.script(script, *args, stdin=stdin)
    elif code is not None:
        job = Job.code(code, *args, stdin=stdin)
    else:
        job = Job.module(module, *args, stdin=stdin)
    base = policy or Policy()
    return Sandbox(base.merge(settings, "detain.run()") if settings else base).run(job)
