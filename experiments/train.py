"""Train an offline RL algorithm on a dataset, several seeds in one compiled program.

    python -m experiments.train algo=td3_bc dataset=d4rl/hopper-medium-v2 seeds=5

Writes into the Hydra run directory: metrics.jsonl, results.json (only when training completes)
and orbax checkpoints (checkpoints/), from which `resume=true` continues.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import hydra
import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import envs
from algorithms import Spec
from experiments import loop, sweep
from experiments.checkpoints import Checkpointer
from experiments.config import CONFIG_DIR, make_algorithm, setup

log = logging.getLogger("train")


class ConfigError(ValueError):
    pass


def check_config(cfg: DictConfig) -> None:
    """Top-level run settings must be integers in range; name the first that is not."""
    limits = {"seed": 0, "seeds": 1, "steps": 1, "log_every": 1, "eval.every": 0,
              "eval.episodes": 0, "checkpoint.keep": 1, "checkpoint.every": 0}
    for key, minimum in limits.items():
        value = OmegaConf.select(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{key} must be an integer >= {minimum} (got {value!r}); fix the "
                              f"override {key}=...")


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train as configured, writing into `run_dir`; returns the results dict."""
    check_config(cfg)
    algo = make_algorithm(cfg.algo)
    raw, info = envs.load(cfg.dataset.source, cfg.dataset.name, cfg.dataset.path,
                          cfg.dataset.download)
    prepared = loop.prepare(algo, raw)
    algo = algo.bind_dataset(prepared.data)
    evaluating = cfg.eval.every > 0 and cfg.eval.episodes > 0
    if evaluating:  # fail now, not after hours of training, if the env does not fit the data
        envs.check_observation_dim(info, raw.observation_dim)
    spec = Spec(raw.observation_dim, raw.action_dim, int(cfg.steps))
    seeds = list(range(cfg.seed, cfg.seed + cfg.seeds))
    init_keys, train_keys = jax.vmap(jax.random.split, out_axes=1)(
        jax.vmap(jax.random.key)(jnp.asarray(seeds)))

    metrics_file = run_dir / "metrics.jsonl"
    pretrained, pretrain_record = None, None
    if algo.pretraining() is not None:
        pretrained, pretrain_record = _pretrain(algo, spec, prepared, cfg, metrics_file)

    compile_start = time.perf_counter()
    states, keys = loop.shard_seeds(
        loop.init_states(algo, spec, prepared.data, init_keys, pretrained), train_keys)
    checkpointer = Checkpointer(run_dir / "checkpoints", keep=cfg.checkpoint.keep)
    history = {"evaluations": []}
    step = 0
    if cfg.resume:
        restored = checkpointer.restore_latest(states, keys)
        if restored is not None:
            states, keys, step, history = restored
            log.info("resumed from step %d", step)
        else:
            log.info("resume=true but no checkpoint in %s: starting from scratch", run_dir)
    _truncate_metrics(metrics_file, step)

    policy = loop.make_policy(algo, prepared.normalizer)
    chunks = {}
    update_time, updates = 0.0, 0
    compile_time = time.perf_counter() - compile_start
    bar = tqdm(total=int(cfg.steps), initial=step, desc=f"{algo.name} {info.name}",
               unit="step", dynamic_ncols=True, disable=None)
    with open(metrics_file, "a") as metrics_out:
        eval_every = int(cfg.eval.every) if evaluating else 0
        save_every = int(cfg.checkpoint.every)
        for stop in loop.chunk_schedule(step, int(cfg.steps), int(cfg.log_every), eval_every,
                                        save_every):
            length = stop - step
            if length not in chunks:
                tic = time.perf_counter()
                chunks[length] = loop.make_train_chunk(algo, length).lower(
                    states, prepared.data, keys).compile()
                compile_time += time.perf_counter() - tic
            tic = time.perf_counter()
            with loop.watchdog(float(cfg.watchdog_seconds), stop):
                states, keys, metrics = chunks[length](states, prepared.data, keys)
                metrics = jax.device_get(metrics)
            update_time += time.perf_counter() - tic
            updates += length
            loop.check_finite(states, metrics, stop)
            reason = algo.stop_reason(metrics)
            if reason:
                raise loop.TrainingStopped(f"{algo.name} stopped training before step {stop}: {reason}; "
                                           "the last checkpoint is kept and no results.json is written.")
            for offset, row in zip(range(step, stop, cfg.log_every),
                                   loop.summarize_metrics(metrics, int(cfg.log_every)), strict=True):
                _write(metrics_out, {"type": "train",
                                     "step": min(offset + int(cfg.log_every), stop), **row})
            step = stop
            bar.update(length)
            if eval_every and (step % eval_every == 0 or step == cfg.steps):
                record = _evaluate(policy, states, cfg, info, raw.observation_dim,
                                   len(history["evaluations"]), step)
                history["evaluations"].append(record)
                _write(metrics_out, {"type": "eval", **record})
                score = record["normalized_score"] or record["return"]
                bar.set_postfix(score=f"{np.mean(score):.1f}")
                log.info("step %d: %s %.1f ± %.1f over %d seed(s) (%.1f s)", step,
                         "normalized score" if record["normalized_score"] else "return",
                         np.mean(score), np.std(score), cfg.seeds, record["seconds"])
            if (save_every and step % save_every == 0) or step == cfg.steps:
                checkpointer.save(step, states, keys, history)
    bar.close()
    checkpointer.wait()
    results = _results(cfg, seeds, history, updates / max(update_time, 1e-9), compile_time)
    if pretrain_record is not None:
        results["pretraining"] = pretrain_record
    (run_dir / "results.json").write_text(json.dumps(results, indent=1))
    return results


def _pretrain(algo, spec: Spec, prepared, cfg: DictConfig, metrics_file: Path):
    """The algorithm's pretraining stage: loaded from the cache when this dataset and these settings
    were pretrained before, else trained (compiled chunks of `log_every` steps, progress bar and
    `"type": "pretrain"` lines in metrics.jsonl) and saved to the cache. Returns (state, record)."""
    import orbax.checkpoint as ocp

    stage = algo.pretraining()
    init = lambda key: stage.init(key, spec, prepared.data)
    abstract = jax.eval_shape(init, jax.random.key(0))
    cache = _pretrain_cache_dir(algo, stage, prepared, cfg)
    record = {"stage": stage.name, "steps": stage.steps, "cache": str(cache) if cache else None}
    if cache is not None and (cache / "state").exists():
        log.info("pretraining '%s': reusing %s", stage.name, cache)
        state = ocp.StandardCheckpointer().restore((cache / "state").absolute(), abstract)
        return state, {**record, "reused": True, "seconds": 0.0}
    tic = time.perf_counter()
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=stage.steps, desc=f"pretrain {stage.name}", unit="step", dynamic_ncols=True,
               disable=None)
    with open(metrics_file, "a") as out:
        def progress(step, means):
            bar.update(step - bar.n)
            bar.set_postfix({name: f"{value:.4g}" for name, value in list(means.items())[:2]})
            _write(out, {"type": "pretrain", "stage": stage.name, "step": step, **means})

        state = loop.pretrain(stage, spec, prepared.data, int(cfg.log_every), progress)
    bar.close()
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save((cache / "state").absolute(), state)  # orbax writes to a temporary
        checkpointer.wait_until_finished()                     # folder and renames it when done
        log.info("pretraining '%s' saved to %s", stage.name, cache)
    return state, {**record, "reused": False, "seconds": time.perf_counter() - tic}


def _pretrain_cache_dir(algo, stage, prepared, cfg: DictConfig) -> Path | None:
    """<pretrain.cache_dir>/<stage>/<algo>-<dataset>-<hash>: the hash covers the stage settings,
    the dataset's identity and a fingerprint of the preprocessed data (sizes and sums)."""
    root = OmegaConf.select(cfg, "pretrain.cache_dir")
    if not root:
        return None
    data = jax.device_get(prepared.data)
    fingerprint = {name: [list(np.shape(value)), float(np.asarray(value, np.float64).sum())]
                   for name, value in zip(data._fields, data, strict=True)}
    identity = {"algo": algo.name, "stage": stage.name, "settings": stage.settings,
                "dataset": [cfg.dataset.source, cfg.dataset.name, cfg.dataset.path],
                "data": fingerprint}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    name = f"{algo.name}-{cfg.dataset.name.replace('/', '-')}-{digest[:16]}"
    return Path(str(root)).expanduser() / stage.name / name


def _evaluate(policy, states, cfg, info, observation_dim, index, step) -> dict:
    tic = time.perf_counter()
    returns = envs.evaluate(policy(states), info, cfg.seeds, cfg.eval.episodes,
                            seed=cfg.seed * 1_000 + index, observation_dim=observation_dim)
    scores = envs.normalized_score(returns, info)
    return {
        "step": step,
        "return": returns.mean(axis=1).tolist(),
        "normalized_score": None if scores is None else scores.mean(axis=1).tolist(),
        "episode_returns": returns.tolist(),
        "seconds": time.perf_counter() - tic,
    }


def _results(cfg, seeds, history, updates_per_second, compile_time) -> dict:
    evaluations = history["evaluations"]
    per_seed = []
    for i, seed in enumerate(seeds):
        scores = [e["normalized_score"][i] for e in evaluations if e["normalized_score"]]
        per_seed.append({
            "seed": seed,
            "final_return": evaluations[-1]["return"][i] if evaluations else None,
            "final_score": scores[-1] if scores else None,
            "best_score": max(scores) if scores else None,
            "episode_returns": {e["step"]: e["episode_returns"][i] for e in evaluations},
        })
    finals = [s["final_score"] for s in per_seed if s["final_score"] is not None]
    summary = None
    if finals:
        summary = {"final_score_mean": float(np.mean(finals)),
                   "final_score_std": float(np.std(finals)),
                   "final_score_iqm": loop.iqm(finals),
                   "best_score_mean": float(np.mean([s["best_score"] for s in per_seed]))}
    return {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "summary": summary,
        "seeds": per_seed,
        "updates_per_second_per_seed": updates_per_second,
        "updates_per_second_total": updates_per_second * len(seeds),
        "compile_seconds": compile_time,
        "devices": [str(d) for d in jax.devices()],
    }


def _write(stream, record: dict) -> None:
    stream.write(json.dumps(record) + "\n")
    stream.flush()


def _truncate_metrics(file: Path, step: int) -> None:
    """On resume, drop metric lines written after the checkpoint being resumed from."""
    if not file.exists():
        return
    lines = [line for line in file.read_text().splitlines() if line and (
        json.loads(line)["step"] <= step or json.loads(line)["type"] == "pretrain")]
    file.write_text("".join(line + "\n" for line in lines))


setup()


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base=None)
def main(cfg: DictConfig) -> dict | None:
    run_dir = Path(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save step at INFO
    if cfg.skip_done and (done := sweep.completed_results(run_dir)) is not None:
        log.info("skip_done=true: %s already has results.json; not training again", run_dir)
        return done["summary"] and done["summary"]["final_score_mean"]
    try:
        results = run(cfg, run_dir)
    except (envs.DatasetError, ConfigError, KeyError, loop.TrainingDiverged) as error:
        sweep.fail(error.args[0] if error.args else str(error))  # exit 2; in a sweep: this job fails
    summary = results["summary"]
    if summary:
        print(f"final normalized score {summary['final_score_mean']:.1f} ± "
              f"{summary['final_score_std']:.1f} (IQM {summary['final_score_iqm']:.1f}) over "
              f"{cfg.seeds} seed(s); results in {run_dir}")
    return summary and summary["final_score_mean"]


if __name__ == "__main__":
    main()
