"""Train an algorithm on a dataset, several seeds in one compiled program, and optionally fine-tune
it online afterwards.

    python -m experiments.train algo=td3_bc dataset=d4rl/hopper-medium-v2 seeds=5
    python -m experiments.train algo=iql dataset=local/hopper-medium online.steps=250000 seeds=4

Writes into the Hydra run directory: metrics.jsonl, results.json (only when training completes)
and orbax checkpoints (checkpoints/), from which a run in the same folder continues, offline or
online (`resume=auto`, the default: only a run of the same settings; `resume_point`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments import sweep
from experiments.config import (
    CONFIG_DIR,
    ConfigError,
    asks_for_help,
    result_settings,
    settings_differences,
    settings_fingerprint,
    setup,
)

log = logging.getLogger("train")


def _import_training():
    """The training modules (JAX, orbax, the algorithms) into this module's namespace, imported on
    the first run rather than at start-up: `--help` answers without them (experiments/config.py)."""
    global jax, jnp, np, tqdm, envs, SettingsError, Spec, grids, loop, online, policies, stages
    global Checkpointer, CheckpointError, check_run_settings, make_algorithm, load
    global MetricsFile, evaluation, results, preemption
    import jax
    import jax.numpy as jnp
    import numpy as np
    from tqdm import tqdm

    import envs
    from algorithms import SettingsError, Spec
    from experiments import grid as grids
    from experiments import loop, online, policies, preemption, stages
    from experiments.checkpoints import Checkpointer, CheckpointError
    from experiments.config import check_run_settings, make_algorithm
    from experiments.data import load
    from experiments.records import MetricsFile, evaluation, results


def run(cfg: DictConfig, run_dir: Path, after_chunk: Callable[[int], None] | None = None) -> dict:
    """Train as configured, writing into `run_dir`; returns the results dict. SIGTERM (or submitit's
    time-limit signal) stops it at the next chunk boundary with a checkpoint (experiments/preemption.py).
    `after_chunk`: given to every phase's loop.ChunkRunner (called with the step after each compiled
    chunk; the tests' fault seam)."""
    _import_training()
    with preemption.watching():
        return _train(cfg, run_dir, after_chunk)


def _train(cfg: DictConfig, run_dir: Path, after_chunk=None) -> dict:
    check_run_settings(cfg)
    algo = make_algorithm(cfg.algo)
    if not algo.learns_offline and cfg.steps:
        raise SettingsError(f"algo={algo.name} learns online only, from its own rollouts (got steps="
                            f"{cfg.steps} offline steps); set steps=0 online.steps=N")
    grid = grids.make_grid(cfg, algo, list(range(cfg.seed, cfg.seed + cfg.seeds)))
    raw, info = load(cfg.dataset.source, cfg.dataset.name, cfg.dataset.path, cfg.dataset.download)
    if OmegaConf.select(cfg, "dataset.last_rows") is not None:  # e.g. MOPO's authors' 1M-row pool
        raw = envs.last_rows(raw, int(cfg.dataset.last_rows))
    online_steps = int(cfg.online.steps)
    evaluating = cfg.eval.every > 0 and cfg.eval.episodes > 0
    if not evaluating and algo.members() > 1 and (warning := algo.handover_without_evaluation()):
        log.warning(warning)
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
        online.check_environments(lambda: envs.make_env(info), online_schedule(cfg, online_steps))
    metrics = MetricsFile(run_dir / "metrics.jsonl")

    def stage_progress(name, step, means, kind):
        metrics.write({"type": "pretrain" if kind == "train" else "validate", "stage": name,
                       "step": step, **means})

    stage_results, stage_records = stages.train_stages(
        algo, spec, prepared.data, cache_root=OmegaConf.select(cfg, "pretrain.cache_dir"),
        dataset_key=(cfg.dataset.source, cfg.dataset.name, cfg.dataset.path),
        log_every=int(cfg.log_every), seeds=seeds, progress=stage_progress,
        paths=OmegaConf.to_container(cfg.stage_paths) if "stage_paths" in cfg else None,
        unknown_next=None if info.next_at_terminals else raw.terminals > 0)
    per_seed = stages.per_seed_names(algo, spec)
    ctx = loop.make_context(algo, prepared, stage_results, per_seed=per_seed)
    online_ctx = loop.make_context(algo, prepared, stage_results, "online", int(cfg.steps),
                                   host=dict(ctx.host), per_seed=per_seed)
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
    restored = resume_point(cfg, checkpointer, templates)
    if restored is not None:
        _, record, trees = restored
        log.info("resumed from %s step %d (environment step %d)", record["phase"],
                 record["step"], record["env_step"])
    checkpointer.write_settings(settings_fingerprint(cfg), result_settings(cfg))
    metrics.truncate(record["step"], record["env_step"])
    history = record["history"]
    stopped = {int(seed): tuple(value) for seed, value in record["stopped"].items()}
    states, buffers, values, keys = loop.shard_seeds(trees["states"], trees["buffers"], values,
                                                     trees["keys"])
    ctx, online_ctx = loop.shard_context(ctx), loop.shard_context(online_ctx)
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

    def save(phase, states, buffers, keys, step, env_step, stopped, environments=None):
        checkpointer.save(step + env_step, {"states": states, "buffers": buffers, "keys": keys},
                          {"phase": phase, "step": step, "env_step": env_step, "history": history,
                           "stopped": {str(k): list(v) for k, v in stopped.items()},
                           "environments": environments})

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
        saved_at = step if restored is not None else None
        for stop in loop.chunk_schedule(step, int(cfg.steps), int(cfg.log_every), eval_every,
                                        save_every):
            if preemption.requested():  # SIGTERM: a checkpoint here, then leave (below)
                if saved_at != step:
                    save("offline", states, buffers, keys, step, 0, runner.stopped)
                break
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
                saved_at = step
        bar.close()
        if preemption.requested() and step < cfg.steps:
            checkpointer.wait()
            preemption.leave(f"step {step}")
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
        schedule = online_schedule(cfg, online_steps)
        state = online.OnlineRun(states, buffers, keys, record["env_step"], history,
                                 record.get("environments"))
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
                                      online_runner.stopped, r.environments), timings=timings["online"])
        bar.close()
        if preemption.requested() and state.env_step < online_steps:  # stopped at a checkpoint
            checkpointer.wait()
            preemption.leave(f"environment step {state.env_step}")
    checkpointer.wait()
    stopped = (online_runner or runner).stopped
    out = results(cfg, seeds, history, info, offline_seconds, runner.compile_seconds, stopped,
                  online_runner, grid)
    out["stages"] = [record.__dict__ for record in stage_records]
    out["timings"] = timings  # wall clock of the offline loop; the online phase's split (online.py)
    (run_dir / "results.json").write_text(json.dumps(out, indent=1))
    return out


def online_schedule(cfg: DictConfig, online_steps: int) -> online.OnlineSchedule:
    return online.OnlineSchedule(online_steps, int(cfg.online.eval_every),
                                 int(cfg.checkpoint.every and cfg.online.checkpoint_every),
                                 int(cfg.online.log_every), int(cfg.online.start_steps))


def resume_point(cfg: DictConfig, checkpointer: Checkpointer, templates: dict):
    """(index, record, trees) of the checkpoint the run continues from, or None to start fresh.

    resume=auto (the default): continue when the folder holds a readable checkpoint written with the
    same settings (`settings_fingerprint`), start fresh when it holds none, refuse (ConfigError) when
    its checkpoints were written with other settings. resume=true: continue from the last checkpoint
    whatever settings wrote it (a longer `steps`, say). resume=false: start over, deleting the
    folder's checkpoints."""
    if checkpointer.latest() is None:
        if cfg.resume is True:
            log.info("resume=true but no checkpoint in %s: starting from scratch",
                     checkpointer.settings_path.parent)
        return None
    if cfg.resume is False:
        log.info("resume=false: deleting the checkpoints in %s and starting over",
                 checkpointer.settings_path.parent)
        checkpointer.clear()
        return None
    saved = checkpointer.read_settings()
    if saved is None or saved["fingerprint"] != settings_fingerprint(cfg):
        changed = ("(its settings.json is missing)" if saved is None else "written with other settings: "
                   + ", ".join(settings_differences(saved["settings"], result_settings(cfg))[:6]))
        if cfg.resume == "auto":
            raise ConfigError(
                f"{checkpointer.settings_path.parent} holds checkpoints {changed}; resume=true continues "
                "from them with these settings, resume=false starts over (deleting them), or choose "
                "another hydra.run.dir")
        log.warning("resume=true: continuing from checkpoints %s", changed)
    return checkpointer.restore_latest(lambda record: templates[record["phase"]])


setup(for_help=__name__ == "__main__" and asks_for_help(sys.argv[1:]))


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base=None)
def main(cfg: DictConfig) -> dict | None:
    run_dir = Path(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)
    _import_training()
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save step at INFO
    sweep.check_multirun()
    if cfg.skip_done and (done := sweep.completed_results(run_dir)) is not None:
        changed = settings_differences(result_settings(done.get("config") or {}), result_settings(cfg))
        if not changed:
            log.info("skip_done=true: %s already has results.json; not training again", run_dir)
            return done["summary"] and done["summary"]["final_score_mean"]
        log.warning("skip_done=true: %s has results.json of other settings (%s); training again from "
                    "scratch", run_dir, ", ".join(changed[:6]))
        cfg.resume = False  # its checkpoints are those of the other settings
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
    sweep.check_plugins(sys.argv[1:])
    main()
