"""Progress of long work outside the agent's phases (stage pretraining, dataset generation): a tqdm
bar on a terminal, as the agent's phases have, and log lines everywhere, since a bar is off in the
non-interactive logs of a cluster job (tqdm's `disable=None`)."""

from __future__ import annotations

import logging
import time

from tqdm import tqdm

log = logging.getLogger("progress")


def duration(seconds: float) -> str:
    """12 s, 4.5 min, 2.1 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """`update(done, **values)` after each piece of work: moves the bar and, at most once every
    `seconds` (and on the first update), logs `<name>: step <done>/<total>, <values>; <elapsed>,
    <left> left`. `bounded`: `total` is an upper bound (a stage that stops early), so the time left
    is one too. `close()` logs the last line."""

    def __init__(self, name: str, total: int, *, unit: str = "step", seconds: float = 30.0,
                 bounded: bool = False, logger: logging.Logger = log):
        self.name, self.total, self.unit, self.seconds = name, total, unit, seconds
        self.bounded, self.logger = bounded, logger
        self.started = time.perf_counter()
        self.last_line = None
        self.done = 0
        self.values: dict = {}
        self.bar = tqdm(total=total, desc=name, unit=unit, dynamic_ncols=True, disable=None)

    def update(self, done: int, **values) -> None:
        self.bar.update(done - self.done)
        self.done = done
        self.values.update(values)
        if values:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
        now = time.perf_counter()
        if self.last_line is None or now - self.last_line >= self.seconds:
            self.last_line = now
            elapsed = now - self.started
            left = elapsed / max(done, 1) * max(self.total - done, 0)
            self.logger.info("%s: %s %d/%d%s; %s, %s%s left", self.name, self.unit, done, self.total,
                             self.describe(), duration(elapsed), "at most " if self.bounded else "",
                             duration(left))

    def describe(self) -> str:
        return "".join(f", {name} {value:.4g}" for name, value in self.values.items())

    def close(self, note: str = "") -> None:
        self.bar.close()
        self.logger.info("%s: done, %d %ss%s in %s%s", self.name, self.done, self.unit, self.describe(),
                         duration(time.perf_counter() - self.started), f" ({note})" if note else "")
