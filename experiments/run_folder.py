"""A run's folder: metrics.jsonl, the orbax checkpoints it continues from, and results.json; and the
hooks (experiments/phases.py) through which the phases write into it."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

import envs
from algorithms import SettingsError
from experiments import compiled_evaluation, loop, members, preemption, records
from experiments.assembly import Assembly
from experiments.checkpoints import Checkpointer, CheckpointError
from experiments.config import ConfigError
from experiments.phases import Hooks, Position
from experiments.settings import result_settings, settings_fingerprint

log = logging.getLogger("train")

# What a run stops on with one `error:` line (exit code 2; in a sweep: this job fails).
FAILURES = (envs.DatasetError, ConfigError, SettingsError, CheckpointError, KeyError, loop.TrainingDiverged)


class RunFolder:
    def __init__(self, cfg, run_dir: Path):
        self.cfg, self.dir = cfg, Path(run_dir)
        self.metrics = records.MetricsFile(self.dir / "metrics.jsonl")
        self.checkpointer: Checkpointer | None = None
        self.position = Position()
        self.asm: Assembly | None = None
        self.policies: dict = {}
        self.compiled: compiled_evaluation.CompiledEvaluation | None = None

    def stage_line(self, name: str, step: int, means: dict, kind: str) -> None:
        """A stage's training or validation line (`Assembly.build(progress=...)`)."""
        self.metrics.write({"type": "pretrain" if kind == "train" else "validate", "stage": name,
                            "step": step, **means})

    def checkpoints(self) -> Checkpointer:
        self.checkpointer = Checkpointer(self.dir / "checkpoints", keep=self.cfg.checkpoint.keep)
        return self.checkpointer

    def start(self, asm: Assembly, restored) -> tuple[Position, dict]:
        """Where the run starts: a checkpoint (`restored`: (index, record, trees) from
        `train.resume_point`) or fresh trees; the settings recorded beside the checkpoints and the
        metrics lines after the starting point dropped."""
        self.asm = asm
        if restored is None:
            trees = asm.fresh()
        else:
            _, record, trees = restored
            self.position = Position.of(record)
            trees = asm.shard(trees)
            log.info("resumed from %s step %d (environment step %d)", record["phase"], record["step"],
                     record["env_step"])
        self.checkpointer.write_settings(settings_fingerprint(self.cfg), result_settings(self.cfg))
        self.metrics.truncate(self.position.step, self.position.env_step)
        return self.position, trees

    def hooks(self) -> Hooks:
        return Hooks(log=self.metrics.write, evaluate=self.evaluate, checkpoint=self.checkpoint,
                     leave=self.leave)

    def policy(self, phase: str, members: int = 1):
        """The phase's batched policy, compiled once per run."""
        if (phase, members) not in self.policies:
            self.policies[phase, members] = self.asm.policy(phase, members=members)
        return self.policies[phase, members]

    def evaluate(self, phase: str, states, step: int, env_step: int = 0):
        """Every seed's evaluation, written to metrics.jsonl and the history; offline, an algorithm
        with several candidates per seed scores them all and then chooses (experiments/members.py).
        Returns the states (acting with the chosen candidates)."""
        asm, history = self.asm, self.position.history
        candidates = asm.algo.candidates() if phase == "offline" else None
        count = candidates.count if candidates is not None and candidates.count > 1 else 1
        tic = time.perf_counter()
        returns = self.play(phase, states, len(history["evaluations"]), count)
        seconds = time.perf_counter() - tic
        if count > 1:
            states, entry = members.evaluate_and_choose(asm.algo, states, returns, seconds, asm.info, step)
        else:
            entry = records.evaluation_entry(returns, asm.info, phase, step, env_step, seconds)
        history["evaluations"].append(entry)
        self.metrics.write({"type": "eval", **entry, **asm.grid.columns()})
        score = entry["normalized_score"] or entry["return"]
        log.info("%s step %d%s: %s %.1f ± %.1f over %d seed(s) (%.1f s)", phase, step,
                 f" (environment step {env_step})" if phase == "online" else "",
                 "normalized score" if entry["normalized_score"] else "return", np.mean(score),
                 np.std(score), len(asm.seeds), entry["seconds"])
        return states

    def play(self, phase: str, states, index: int, copies: int) -> np.ndarray:
        """Every episode's return of evaluation number `index`, (seeds x copies, episodes): in the
        dataset's gymnasium environment (the reference), or compiled in its JAX environment
        (experiments/compiled_evaluation.py), as `eval.backend` says."""
        asm = self.asm
        if compiled_evaluation.evaluation_backend(self.cfg) == "mjx":
            if self.compiled is None:
                self.compiled = compiled_evaluation.CompiledEvaluation(asm)
            return self.compiled.returns(phase, states, index, copies)
        return records.play(self.policy(phase, copies)(states), asm.info, asm.seeds, self.cfg, phase, index,
                            asm.raw.observation_dim, copies)

    def checkpoint(self, position: Position, trees: dict) -> None:
        self.checkpointer.save(position.step + position.env_step, trees, position.record())

    def leave(self, where: str) -> None:
        """SIGTERM: the checkpoint just written is waited for, then the process leaves (preemption)."""
        self.checkpointer.wait()
        preemption.leave(where)

    def finish(self, offline_runner: loop.ChunkRunner, online_runner: loop.ChunkRunner | None,
               timings: dict) -> dict:
        """results.json (experiments/records.py), once the last checkpoint is written."""
        asm = self.asm
        self.checkpointer.wait()
        stopped = (online_runner or offline_runner).stopped
        out = records.results(self.cfg, asm.seeds, self.position.history, asm.info,
                              offline_runner.updates_per_second, offline_runner.compile_seconds, stopped,
                              online_runner, asm.grid)
        out["stages"] = [record.__dict__ for record in asm.stage_records]
        out["timings"] = timings  # wall clock of the offline loop; the online phase's split (online.py)
        (self.dir / "results.json").write_text(json.dumps(out, indent=1))
        return out
