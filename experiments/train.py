"""Train an algorithm on a dataset, several seeds in one compiled program, and optionally fine-tune
it online afterwards.

    python -m experiments.train algo=td3_bc dataset=d4rl/hopper-medium-v2 seeds=5
    python -m experiments.train algo=iql dataset=local/hopper-medium online.steps=250000 seeds=4

Writes into the Hydra run directory: metrics.jsonl, results.json (only when training completes)
and orbax checkpoints (checkpoints/), from which `resume=true` continues, offline or online.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import hydra
import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import envs
from algorithms import SettingsError, Spec
from experiments import grid as grids
from experiments import loop, online, policies, stages, sweep
from experiments.checkpoints import Checkpointer, CheckpointError
from experiments.config import CONFIG_DIR, ConfigError, check_run_settings, make_algorithm, setup
from experiments.data import load
from experiments.records import MetricsFile, evaluation, results

log = logging.getLogger("train")


def run(cfg: DictConfig, run_dir: Path, after_chunk: Callable[[int], None] | None = None) -> dict:
    """Train as configured, writing into `run_dir`; returns the results dict. `after_chunk`: given
    to every phase's loop.ChunkRunner (called with the step after each compiled chunk)."""
    check_run_settings(cfg)
    algo = make_algorithm(cfg.algo)
    if not algo.learns_offline and cfg.steps:
        raise SettingsError(f"algo={algo.name} learns online only, from its own rollouts (got steps="
                            f"{cfg.steps} offline steps); set steps=0 online.steps=N")
    grid = grids.make_grid(cfg, algo, list(range(cfg.seed, cfg.seed + cfg.seeds)))
    raw, info = load(cfg.dataset.source, cfg.dataset.name, cfg.dataset.path, cfg.dataset.download)
    online_steps = int(cfg.online.steps)
    evaluating = cfg.eval.every > 0 and cfg.eval.episodes > 0
    if evaluating or online_steps:  # fail now, not after hours of training, if the env does not fit
        envs.check_observation_dim(info, raw.observation_dim)  # (actions: checked by load)
    prepared = loop.prepare(algo, raw)
    spec = Spec(raw.observation_dim, raw.action_dim, int(cfg.steps))
    grids.check_host_fields(grid, algo, spec, raw)
    seeds = grid.training_seeds  # one per training: every grid point's seeds
    init_keys, train_keys = jax.vmap(jax.random.split, out_axes=1)(
        jax.vmap(jax.random.key)(jnp.asarray(seeds)))
    if online_steps:  # before any training: a buffer too small for the dataset is refused now
        capacity = online.buffer_capacity(algo, prepared.data.size, online_steps,
                                          int(cfg.online.start_steps))
    metrics = MetricsFile(run_dir / "metrics.jsonl")

    def stage_progress(name, step, means, kind):
        metrics.write({"type": "pretrain" if kind == "train" else "validate", "stage": name,
                       "step": step, **means})

    stage_results, stage_records = stages.train_stages(
        algo, spec, prepared.data, cache_root=OmegaConf.select(cfg, "pretrain.cache_dir"),
        dataset_key=(cfg.dataset.source, cfg.dataset.name, cfg.dataset.path),
        log_every=int(cfg.log_every), progress=stage_progress,
        paths=OmegaConf.to_container(cfg.stage_paths) if "stage_paths" in cfg else None)
    ctx = loop.make_context(algo, prepared, stage_results)
    online_ctx = loop.make_context(algo, prepared, stage_results, "online", int(cfg.steps),
                                   host=dict(ctx.host))
    grids.check_traceable(grid, algo, spec, prepared, {"offline": ctx, **(
        {"online": online_ctx} if online_steps else {})}, capacity if online_steps else 0)
    values = grid.values()
    states = loop.init_states(algo, spec, ctx, init_keys, values=values)
    templates = {"offline": {"states": states, "buffers": loop.init_buffers(algo, spec, ctx, len(seeds)),
                             "keys": train_keys}}
    if online_steps:
        online_states = jax.eval_shape(lambda s: online.begin(algo, spec, online_ctx, s, values), states)
        templates["online"] = {"states": online_states, "keys": train_keys,
                               "buffers": loop.replay_buffers(capacity, spec, len(seeds))}
    checkpointer = Checkpointer(run_dir / "checkpoints", keep=cfg.checkpoint.keep)
    record = {"phase": "offline", "step": 0, "env_step": 0, "stopped": {},
              "history": {"evaluations": [], "episodes": []}}
    trees = templates["offline"]
    if cfg.resume:
        restored = checkpointer.restore_latest(lambda saved: templates[saved["phase"]])
        if restored is None:
            log.info("resume=true but no checkpoint in %s: starting from scratch", run_dir)
        else:
            _, record, trees = restored
            log.info("resumed from %s step %d (environment step %d)", record["phase"],
                     record["step"], record["env_step"])
    metrics.truncate(record["step"], record["env_step"])
    history = record["history"]
    stopped = {int(seed): tuple(value) for seed, value in record["stopped"].items()}
    states, buffers, values, keys = loop.shard_seeds(trees["states"], trees["buffers"], values,
                                                     trees["keys"])
    policy = policies.make_policy(algo, prepared.preprocessor, values=values)
    member_policy = policies.make_policy(algo, prepared.preprocessor, values=values, members=algo.members())
    columns = grid.columns()  # each training's seed and grid values, for metrics.jsonl

    def evaluate(states, phase, step, env_step=0):
        """Returns the states: offline, an algorithm with several members per seed (Uni-O4) scores
        them all and chooses the one its seed acts with (`Algorithm.choose`)."""
        members = algo.members() if phase == "offline" else 1
        chosen = {"states": states}

        def choose(scores):
            chosen["states"], record = policies.choose_members(algo, states, scores)
            return record

        entry = evaluation((member_policy if members > 1 else policy)(states), info, seeds, cfg, phase,
                           step, env_step, index=len(history["evaluations"]),
                           observation_dim=raw.observation_dim, members=members, choose=choose)
        history["evaluations"].append(entry)
        metrics.write({"type": "eval", **entry, **columns})
        score = entry["normalized_score"] or entry["return"]
        log.info("%s step %d%s: %s %.1f ± %.1f over %d seed(s) (%.1f s)", phase, step,
                 f" (environment step {env_step})" if phase == "online" else "",
                 "normalized score" if entry["normalized_score"] else "return", np.mean(score),
                 np.std(score), len(seeds), entry["seconds"])
        return chosen["states"]

    def save(phase, states, buffers, keys, step, env_step, stopped):
        checkpointer.save(step + env_step, {"states": states, "buffers": buffers, "keys": keys},
                          {"phase": phase, "step": step, "env_step": env_step, "history": history,
                           "stopped": {str(k): list(v) for k, v in stopped.items()}})

    # ---- offline phase ------------------------------------------------------------------------
    runner = loop.ChunkRunner(algo, "offline", float(cfg.watchdog_seconds), stopped, values=values,
                              early_stop=grid.early_stop(algo), after_chunk=after_chunk)
    step = record["step"]
    offline_started = time.perf_counter()
    if record["phase"] == "offline" and step < cfg.steps:
        eval_every = int(cfg.eval.every) if evaluating else 0
        save_every = int(cfg.checkpoint.every)
        bar = tqdm(total=int(cfg.steps), initial=step, desc=f"{algo.name} {info.name}", unit="step",
                   dynamic_ncols=True, disable=None)
        for stop in loop.chunk_schedule(step, int(cfg.steps), int(cfg.log_every), eval_every,
                                        save_every):
            states, buffers, keys, chunk_metrics = runner(states, buffers, keys, ctx, stop - step, stop)
            for offset, row in zip(range(step, stop, cfg.log_every),
                                   loop.summarize_metrics(chunk_metrics, int(cfg.log_every)),
                                   strict=True):
                metrics.write({"type": "train", "phase": "offline",
                               "step": min(offset + int(cfg.log_every), stop), **row, **columns})
            bar.update(stop - step)
            step = stop
            if eval_every and (step % eval_every == 0 or step == cfg.steps):
                states = evaluate(states, "offline", step)
            if (save_every and step % save_every == 0) or step == cfg.steps:
                save("offline", states, buffers, keys, step, 0, runner.stopped)
        bar.close()
    timings = {"offline": {"seconds": time.perf_counter() - offline_started}, "online": {}}
    offline_seconds = runner.updates_per_second

    # ---- online phase -------------------------------------------------------------------------
    online_runner = None
    if online_steps:
        online_runner = loop.ChunkRunner(algo, "online", float(cfg.watchdog_seconds), runner.stopped,
                                         values=values, early_stop=grid.early_stop(algo),
                                         after_chunk=after_chunk)
        if record["phase"] == "offline":  # starting it: fresh replay buffers, the algorithm's
            # online states (begin_online), same keys
            states, buffers = loop.shard_seeds(online.begin(algo, spec, online_ctx, states, values),
                                               templates["online"]["buffers"], keys)[:2]
        schedule = online.OnlineSchedule(online_steps, int(cfg.online.eval_every),
                                         int(cfg.checkpoint.every and cfg.online.checkpoint_every),
                                         int(cfg.online.log_every), int(cfg.online.start_steps))
        state = online.OnlineRun(states, buffers, keys, record["env_step"], history)
        bar = tqdm(total=online_steps, initial=state.env_step, desc=f"{algo.name} online",
                   unit="env step", dynamic_ncols=True, disable=None)

        def log_online(env_step, row):
            bar.update(env_step - bar.n)
            metrics.write({"type": "train", "phase": "online", "step": int(state.states.step),
                           "env_step": env_step, **row, **columns})

        online.train_online(
            algo, online_ctx, prepared.preprocessor, lambda: envs.make_env(info), schedule, seeds, state,
            online_runner, log=log_online,
            evaluate=lambda r: evaluate(r.states, "online", int(r.states.step), r.env_step),
            checkpoint=lambda r: save("online", r.states, r.buffers, r.keys, int(cfg.steps), r.env_step,
                                      online_runner.stopped), timings=timings["online"])
        bar.close()
    checkpointer.wait()
    stopped = (online_runner or runner).stopped
    out = results(cfg, seeds, history, info, offline_seconds, runner.compile_seconds, stopped,
                  online_runner, grid)
    out["stages"] = [record.__dict__ for record in stage_records]
    out["timings"] = timings  # wall clock of the offline loop; the online phase's split (online.py)
    (run_dir / "results.json").write_text(json.dumps(out, indent=1))
    return out


setup()


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base=None)
def main(cfg: DictConfig) -> dict | None:
    run_dir = Path(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save step at INFO
    if cfg.skip_done and (done := sweep.completed_results(run_dir)) is not None:
        log.info("skip_done=true: %s already has results.json; not training again", run_dir)
        return done["summary"] and done["summary"]["final_score_mean"]
    try:
        out = run(cfg, run_dir)
    except (envs.DatasetError, ConfigError, SettingsError, CheckpointError, KeyError,
            loop.TrainingDiverged) as error:
        sweep.fail(error.args[0] if error.args else str(error))  # exit 2; in a sweep: this job fails
    summary = out["summary"]
    for point in out.get("grid", {}).get("points", []):
        if point["summary"]:
            print(f"{grids.describe(point['values'])}: ", end="")
            print_summary(point["summary"], cfg.seeds, run_dir)
    if summary:
        print_summary(summary, cfg.seeds, run_dir)
    return summary and summary["final_score_mean"]


def print_summary(summary: dict, seeds: int, run_dir: Path) -> None:
    print(f"final normalized score {summary['final_score_mean']:.1f} ± {summary['final_score_std']:.1f} "
          f"(IQM {summary['final_score_iqm']:.1f}) over {seeds} seed(s); results in {run_dir}")


if __name__ == "__main__":
    main()
