"""An evaluation's environments split over worker processes: each worker steps its share in a
gymnasium `SyncVectorEnv`, the main process makes one batched policy call per step for all of them.

gymnasium's `AsyncVectorEnv` gives one process per environment, wrong for hundreds of
environments on a few cores; here it runs one process per worker instead, each holding a `Share`
(a `gym.Env` standing for a group of environments) driven through `AsyncVectorEnv.call`, so that
starting, stopping and passing errors back from the processes stay the library's.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import sys
import types
import warnings
from collections.abc import Callable

import gymnasium as gym
import numpy as np

from envs.dataset import DatasetError


class Share(gym.Env):
    """Rows `rows` of an evaluation's environments in one `SyncVectorEnv`, built in the worker by
    `start` (not in the constructor, which `AsyncVectorEnv` also calls on the main process, and
    outside of which a worker's errors are not passed back)."""

    # Unused: a share is driven by `start` and `advance` through `AsyncVectorEnv.call`.
    observation_space = action_space = gym.spaces.Box(0.0, 1.0, (1,))

    def __init__(self, env_factory: Callable, rows: slice):
        self.env_factory, self.rows, self.vector = env_factory, rows, None

    def start(self, seeds: list[int]) -> np.ndarray:
        """Build the share's environments and reset each with its seed; their observations."""
        share = seeds[self.rows]
        self.vector = gym.vector.SyncVectorEnv([self.env_factory for _ in share],
                                               autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
        observations, _ = self.vector.reset(seed=share)
        return observations

    def advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step the share's environments with their rows of `actions` (all environments' actions):
        observations, rewards, and whether each episode ended (terminated or truncated)."""
        observations, rewards, terminated, truncated, _ = self.vector.step(actions[self.rows])
        return observations, rewards, terminated | truncated

    def close(self):
        if self.vector is not None:
            self.vector.close()


class WorkerEnvs:
    """`count` environments from `env_factory` over `workers` processes (contiguous shares, sizes
    differing by at most one, so concatenating the shares keeps the environments' order). Any
    failure in a worker (an environment that cannot be built or raises, a process that dies) is
    raised as one DatasetError; `close` always ends the processes."""

    def __init__(self, env_factory: Callable, count: int, workers: int):
        shares = [slice(int(rows[0]), int(rows[-1]) + 1)
                  for rows in np.array_split(np.arange(count), workers)]
        self.failed = False
        try:
            with _workers_skip_the_main_module():
                self.vector = gym.vector.AsyncVectorEnv(
                    [lambda rows=rows: Share(env_factory, rows) for rows in shares], shared_memory=False,
                    context=_start_method())
        except Exception as error:  # e.g. a process that dies before answering (its traceback is printed)
            raise DatasetError(f"cannot start {workers} evaluation worker processes "
                               f"({type(error).__name__}: {_first_line(error)}); set eval.workers=1 to "
                               "evaluate on the main process.") from None

    def _call(self, method: str, argument) -> tuple[np.ndarray, ...]:
        """`method(argument)` in every worker; the shares' results concatenated in order."""
        try:
            with warnings.catch_warnings():  # gymnasium logs the worker's traceback; one line is raised
                warnings.filterwarnings("ignore", message=".*(ERROR|Received the following error|Raising)")
                results = self.vector.call(method, argument)
        except BaseException as error:
            self.failed = True  # the workers are then terminated, not asked to close
            if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit
                raise
            if isinstance(error, DatasetError):
                raise DatasetError(str(error)) from None
            if isinstance(error, EOFError | ConnectionError | OSError):
                ended = multiprocessing.connection.wait([p.sentinel for p in self.vector.processes], 1.0)
                codes = [p.exitcode for p in self.vector.processes if p.sentinel in ended]
                raise DatasetError(
                    f"an evaluation worker process died (exit code {codes[0] if codes else 'unknown'}) "
                    "while stepping its environments; rerun with eval.workers=1 to see the environment's "
                    "own error.") from None
            raise DatasetError(
                f"an evaluation environment failed in a worker process ({type(error).__name__}: "
                f"{_first_line(error)}); rerun with eval.workers=1 for its traceback.") from None
        if method == "start":
            return np.concatenate(results)
        return tuple(np.concatenate(parts) for parts in zip(*results, strict=True))

    def start(self, seeds: list[int]) -> np.ndarray:
        """`Share.start` for all environments."""
        return self._call("start", seeds)

    def advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`Share.advance` for all environments."""
        return self._call("advance", actions)

    def close(self) -> None:
        """Close the workers' environments and end the processes; after a failure, end them at once
        (gymnasium's own `close(terminate=True)` first reads the pending answers, and a dead
        worker's pipe then raises)."""
        if not self.failed:
            self.vector.close()
            return
        for process in self.vector.processes:
            if process.is_alive():
                process.terminate()
            process.join()
        for pipe in self.vector.parent_pipes:
            if pipe is not None:
                pipe.close()
        self.vector.closed = True


def _first_line(error: BaseException, limit: int = 400) -> str:
    """The error's message on one line."""
    return " ".join(str(error).split())[:limit]


def _start_method() -> str | None:
    """forkserver where there is one, not fork: the main process runs JAX's threads, which a forked
    child must not inherit. The server, started once per process, imports gymnasium (this module),
    so that each evaluation's workers, forked from it, start without importing it again."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    multiprocessing.set_forkserver_preload(["envs.parallel"])
    return "forkserver"


@contextlib.contextmanager
def _workers_skip_the_main_module():
    """While workers start, make the main module look like an interactive session's.

    multiprocessing's forkserver and spawn children first run the main module again (as
    `__mp_main__`): for `python -m experiments.train` that imports JAX, Hydra and the algorithms in
    every worker of every evaluation (an evaluation took 15 s instead of 0.5 s on the busy 2-core
    development machine), and a script without the `if __name__ == "__main__":` guard would start
    its work again. The workers need nothing from it (the environment factories are pickled by
    value or by their own module), so while they start, `sys.modules["__main__"]` is an empty
    module, which they are told to skip, as for a notebook."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main
