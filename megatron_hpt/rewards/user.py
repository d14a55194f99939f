"""A user's own grader, ``--reward-fn module:function``: loaded once (errors name the flag and
what is missing), then called under the same per-answer bound as the built-in graders.

The bound is a wall-clock alarm (``SIGALRM``, as math-verify's own timeouts) of ``timeout_s``
seconds around each call: a call that passes it, or raises, scores 0 and is logged (the first few
times). The alarm only exists in a process's main thread (the trainer's, or a reward worker's);
called from another thread the grader runs unbounded.
"""
from __future__ import annotations

import importlib
import logging
import math
import signal
import threading
from typing import Callable

logger = logging.getLogger(__name__)
_LOGGED_FAILURES = 3


class _Timeout(Exception):
    pass


def resolve(spec: str) -> Callable:
    """The function named by ``module:function``; ValueError naming the flag otherwise."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--reward-fn {spec!r}: expected module:function, e.g. my_rewards:grade")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--reward-fn {spec!r}: cannot import module {module_name!r} ({e}); "
                         "put it on PYTHONPATH or in the working directory") from e
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"--reward-fn {spec!r}: module {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise ValueError(f"--reward-fn {spec!r}: {attr!r} is not callable")
    return fn


class BoundedReward:
    """``fn(response, answer)`` as a float, 0 when it passes ``timeout_s`` seconds or raises."""

    def __init__(self, spec: str, fn: Callable, timeout_s: float):
        if timeout_s <= 0:
            raise ValueError(f"--reward-timeout must be > 0, got {timeout_s}")
        self.spec, self.fn, self.timeout_s = spec, fn, float(timeout_s)
        self.failures = 0

    def __call__(self, response: str, answer: str) -> float:
        try:
            value = float(self._bounded(response, answer))
        except _Timeout:
            return self._fail(f"took longer than --reward-timeout {self.timeout_s:g} s")
        except Exception as e:  # the grader's failure is this answer's 0, not the run's end
            return self._fail(f"raised {type(e).__name__}: {e}")
        if not math.isfinite(value):
            return self._fail(f"returned {value}")
        return value

    def _bounded(self, response: str, answer: str):
        if threading.current_thread() is not threading.main_thread():
            return self.fn(response, answer)

        def expire(signum, frame):
            raise _Timeout()

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, self.timeout_s)
        try:
            return self.fn(response, answer)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def _fail(self, why: str) -> float:
        self.failures += 1
        if self.failures <= _LOGGED_FAILURES:
            logger.warning("--reward-fn %s %s; the answer scores 0 (failure %d)",
                           self.spec, why, self.failures)
        return 0.0


def load_user_reward(spec: str, timeout_s: float = 5) -> BoundedReward:
    """The grader of ``--reward-fn spec`` under a ``timeout_s`` bound per call."""
    return BoundedReward(spec, resolve(spec), timeout_s)
