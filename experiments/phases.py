"""The two phases of a run, side by side, with the same hooks: offline (gradient steps on the
dataset, in compiled chunks) and online (environment steps, then updates: experiments/online.py).
Between chunks each phase hands its metrics lines, evaluations and checkpoints to `Hooks`, and on
SIGTERM (experiments/preemption.py) it checkpoints at the chunk boundary and stops there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm import tqdm

from experiments import loop, online, online_compiled, preemption
from experiments.assembly import Assembly


@dataclass
class Hooks:
    """log(line): a metrics line of training ("type": "train");
    evaluate(phase, states, step, env_step) -> states (offline, an algorithm with candidates
        chooses among them here: experiments/members.py);
    checkpoint(position, trees): `position` says where the trees stand;
    leave(where): after a checkpoint on SIGTERM: wait for it to be written and exit (`preemption`)."""

    log: Callable[[dict], None]
    evaluate: Callable[..., object]
    checkpoint: Callable[[Position, dict], None]
    leave: Callable[[str], None]


@dataclass
class Position:
    """Where a run stands: what a checkpoint records beside its trees."""

    phase: str = "offline"
    step: int = 0  # gradient steps
    env_step: int = 0
    history: dict = field(default_factory=lambda: {"evaluations": [], "episodes": []})
    stopped: dict = field(default_factory=dict)  # seed index -> (step, reason)
    environments: dict | None = None  # where the online environments stand (online.OnlineRun)

    def record(self) -> dict:
        return {"phase": self.phase, "step": self.step, "env_step": self.env_step, "history": self.history,
                "stopped": {str(k): list(v) for k, v in self.stopped.items()},
                "environments": self.environments}

    @classmethod
    def of(cls, record: dict) -> Position:
        return cls(record["phase"], record["step"], record["env_step"], record["history"],
                   {int(seed): tuple(value) for seed, value in record["stopped"].items()},
                   record.get("environments"))


def run_offline(asm: Assembly, trees: dict, position: Position, hooks: Hooks, runner: loop.ChunkRunner,
                saved: bool = False) -> dict:
    """Gradient steps from `position.step` to `steps`, in chunks ending where the host logs
    (`log_every`), evaluates (`eval.every`) or checkpoints (`checkpoint.every`, and the last step).
    `saved`: the trees at `position` are a checkpoint already (a resumed run). Returns the trees."""
    cfg, steps = asm.cfg, int(asm.cfg.steps)
    log_every = int(cfg.log_every)
    eval_every = int(cfg.eval.every) if cfg.eval.every > 0 and cfg.eval.episodes > 0 else 0
    save_every = int(cfg.checkpoint.every)
    if position.phase != "offline" or position.step >= steps:
        return trees
    bar = tqdm(total=steps, initial=position.step, desc=f"{asm.algo.name} {asm.info.name}", unit="step",
               dynamic_ncols=True, disable=None)
    columns = asm.grid.columns()
    for stop in loop.chunk_schedule(position.step, steps, log_every, eval_every, save_every):
        if preemption.requested():  # SIGTERM: a checkpoint here, then leave
            if not saved:
                hooks.checkpoint(position, trees)
            hooks.leave(f"step {position.step}")
        start = position.step
        states, buffers, keys, metrics = runner(trees["states"], trees["buffers"], trees["keys"],
                                                asm.contexts["offline"], stop - start, stop)
        for offset, row in zip(range(start, stop, log_every), loop.summarize_metrics(metrics, log_every),
                               strict=True):
            hooks.log({"type": "train", "phase": "offline", "step": min(offset + log_every, stop), **row,
                       **columns})
        bar.update(stop - start)
        position.step, position.stopped, saved = stop, runner.stopped, False
        if eval_every and (stop % eval_every == 0 or stop == steps):
            states = hooks.evaluate("offline", states, stop, 0)
        trees = {"states": states, "buffers": buffers, "keys": keys}
        if (save_every and stop % save_every == 0) or stop == steps:
            hooks.checkpoint(position, trees)
            saved = True
    bar.close()
    return trees


def run_online(asm: Assembly, trees: dict, position: Position, hooks: Hooks, runner: loop.ChunkRunner,
               timings: dict | None = None) -> dict:
    """Environment steps from `position.env_step` to `online.steps` (experiments/online.py), with
    the learner the algorithm hands over to. `trees` are the online phase's (`Assembly.begin_online`
    or a checkpoint's). Returns the trees; `timings` (if given) gets where the time went.
    env.backend=mjx: the whole phase compiled (experiments/online_compiled.py)."""
    if asm.backend == "mjx":
        return online_compiled.run_online(asm, trees, position, hooks, runner, timings)
    schedule = asm.online_schedule()
    run = online.OnlineRun(trees["states"], trees["buffers"], trees["keys"], position.env_step,
                           position.history, position.environments)
    bar = tqdm(total=schedule.steps, initial=run.env_step, desc=f"{asm.algo.name} online", unit="env step",
               dynamic_ncols=True, disable=None)
    columns = asm.grid.columns()
    position.phase, position.step = "online", int(asm.cfg.steps)

    def log(env_step: int, row: dict) -> None:
        bar.update(env_step - bar.n)
        hooks.log({"type": "train", "phase": "online", "step": int(run.states.step), "env_step": env_step,
                   **row, **columns})

    def checkpoint(run: online.OnlineRun) -> None:
        position.env_step, position.environments = run.env_step, run.environments
        position.stopped = runner.stopped
        hooks.checkpoint(position, {"states": run.states, "buffers": run.buffers, "keys": run.keys})

    online.train_online(asm.algo, asm.contexts["online"], asm.prepared.preprocessor, asm.make_env, schedule,
                        asm.seeds, run, runner, log=log, checkpoint=checkpoint, timings=timings,
                        num_envs=asm.spec.num_envs,
                        evaluate=lambda r: hooks.evaluate("online", r.states, int(r.states.step), r.env_step))
    bar.close()
    position.env_step, position.stopped = run.env_step, runner.stopped
    if preemption.requested() and run.env_step < schedule.steps:  # stopped at a checkpoint
        hooks.leave(f"environment step {run.env_step}")
    return {"states": run.states, "buffers": run.buffers, "keys": run.keys}

