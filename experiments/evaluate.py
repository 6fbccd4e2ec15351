"""Evaluate a kept checkpoint of a run, optionally with videos and on a changed environment.

    python -m experiments.evaluate runs/2026-12-05_iql_hopper-medium    # newest checkpoint, run's protocol
    python -m experiments.evaluate runs/... checkpoint=200000 episodes=50 seeds=[0,3]
    python -m experiments.evaluate runs/... video=true video.episodes=2 # mp4s under runs/.../videos/
    python -m experiments.evaluate runs/... +env.frame_skip=5           # gym.make arguments over the run's

Restores the algorithm states of the checkpoint (experiments/restored.py: no buffers), rebuilds the
run's own batched policy with its preprocessing (experiments/policies.py, the program the run
evaluated with) and plays `episodes` episodes per training seed. By default the episodes are those
of the checkpoint's own last evaluation (`envs.episode_seeds`), so the returns are the ones the run
recorded; `evaluation_index=N` picks others. Writes `evaluation.json` into the run folder (never
results.json) and prints the normalized score (or return) mean ± std over the seeds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments.config import CONFIG_DIR, ConfigError

log = logging.getLogger("evaluate")

VIDEOS = "videos"


def evaluate_run(run_dir, checkpoint: int | None = None, episodes: int | None = None, seeds=None,
                 point: dict | None = None, deterministic: bool = True, evaluation_index: int | None = None,
                 workers="auto", env: dict | None = None, video: dict | None = None,
                 out: str | None = "evaluation.json") -> dict:
    """Evaluate the run in `run_dir` (the options of configs/evaluate.yaml); returns what it writes
    to `run_dir/out` (None: nothing written)."""
    import jax
    import numpy as np

    import envs
    from experiments import policies, records
    from experiments.restored import restore

    _check_options(episodes, seeds, deterministic, evaluation_index, workers, out)
    tic = time.perf_counter()
    restored = restore(run_dir, checkpoint)
    cfg, record, history = restored.cfg, restored.record, restored.record["history"]
    trainings = restored.select(seeds, point)
    states, values = restored.subset(trainings)
    training_seeds = [restored.training_seeds[i] for i in trainings]
    info, overrides = restored.info, dict(env or {})
    if overrides:  # over the dataset's and the protocol's own arguments (envs.evaluation_env_kwargs)
        arguments = {k: v for k, v in overrides.items() if k != "max_episode_steps"}  # gym.make's own
        limit = overrides.get("max_episode_steps", info.max_episode_steps)
        info = dataclasses.replace(info, eval_overrides={**info.eval_overrides, **arguments},
                                   max_episode_steps=limit)
    if episodes is None:
        episodes = records.episode_count(cfg, restored.phase)
    if episodes < 1:
        raise ConfigError(f"the run's protocol evaluates {episodes} episodes (evaluation was off); set "
                          "episodes=N")
    if evaluation_index is None:
        evaluation_index = own_evaluation_index(history, record)
    recorder = None
    if video and video.get("record"):
        from envs import video as videos

        rendering = dataclasses.replace(info, eval_overrides={**info.eval_overrides,
                                                               "render_mode": "rgb_array"})
        videos.check_renderer(lambda: envs.make_env(rendering), info.env_id)  # before the evaluation
        recorder = (videos, rendering)

    keys = jax.vmap(jax.random.key)(np.asarray(training_seeds)) if not deterministic else None
    bound = policies.make_policy(restored.algo, restored.preprocessor, deterministic, values,
                                 phase=restored.phase)(states, keys)

    def fresh_policy():
        """The policy from its first step on; exploring, a new key every step (a counter folded in)."""
        calls = iter(range(1 << 62))
        return lambda observations: bound(observations, next(calls))

    env_seeds = envs.episode_seeds(training_seeds, evaluation_index, episodes)
    returns = envs.evaluate(fresh_policy(), info, env_seeds, observation_dim=restored.observation_dim,
                            workers=workers)
    scores = envs.normalized_score(returns, info)
    recorded = _recorded(history, evaluation_index, trainings, episodes)
    per_seed = []
    for row, training in enumerate(trainings):
        entry = {"seed": restored.training_seeds[training], "return": float(returns[row].mean()),
                 "normalized_score": None if scores is None else float(scores[row].mean()),
                 "episode_returns": returns[row].tolist()}
        if restored.grid.fields:
            entry["grid"] = restored.grid.point_of(training)
        if recorded is not None:  # what the run itself got on these episodes
            entry["recorded_episode_returns"] = recorded[row]
        per_seed.append(entry)
    finals = scores if scores is not None else returns
    result = {
        "run": str(Path(run_dir)), "algorithm": restored.algo.name, "dataset": info.key,
        "checkpoint": restored.index, "phase": restored.phase, "step": record["step"],
        "env_step": record["env_step"], "evaluation_index": evaluation_index, "episodes": episodes,
        "deterministic": deterministic, "env": overrides,
        "summary": {"score": "normalized_score" if scores is not None else "return",
                    "mean": float(finals.mean(axis=1).mean()), "std": float(finals.mean(axis=1).std()),
                    "seeds": len(trainings)},
        "seeds": per_seed, "seconds": None,
    }
    if restored.grid.fields:  # a summary per grid point, as results.json has it
        result["points"] = [{"values": point, "mean": float(np.mean(rows)), "std": float(np.std(rows))}
                            for point in restored.grid.points
                            if (rows := [finals[row].mean() for row, training in enumerate(trainings)
                                         if restored.grid.point_of(training) == point])]
    if recorder is not None:
        videos, rendering = recorder
        count = min(int(video.get("episodes") or 1), episodes)
        folder = Path(run_dir) / VIDEOS

        written = []

        def path_of(row, episode, episode_return):
            written.append(folder / (f"checkpoint{restored.index}_seed{training_seeds[row]}_episode"
                                     f"{episode}_return{episode_return:.1f}.mp4"))
            return written[-1]

        videos.record(fresh_policy(), lambda: envs.make_env(rendering), env_seeds[:, :count], path_of,
                      fps=video.get("fps"))
        result["videos"] = [str(path.relative_to(run_dir)) for path in written]
    result["seconds"] = time.perf_counter() - tic
    if out:
        (Path(run_dir) / out).write_text(json.dumps(result, indent=1))
    return result


def own_evaluation_index(history: dict, record: dict) -> int:
    """The index of the checkpoint's own evaluation (the last one, when it was made where the
    checkpoint was: at its gradient step offline, at its environment step online, where an
    evaluation's `step` counts the online updates too), else the next index: episodes the run has
    not played."""
    evaluations = history["evaluations"]
    if evaluations and evaluations[-1].get("phase", "offline") == record["phase"] and (
            evaluations[-1]["env_step"] == record["env_step"] if record["phase"] == "online"
            else evaluations[-1]["step"] == record["step"]):
        return len(evaluations) - 1
    return len(evaluations)


def _recorded(history: dict, index: int, trainings: list[int], episodes: int):
    """The run's own episode returns of evaluation `index` for `trainings` (their first `episodes`),
    or None when it did not play those (another index, or fewer episodes)."""
    evaluations = history["evaluations"]
    if index >= len(evaluations) or len(evaluations[index]["episode_returns"][0]) < episodes:
        return None
    return [evaluations[index]["episode_returns"][i][:episodes] for i in trainings]


def _check_options(episodes, seeds, deterministic, evaluation_index, workers, out) -> None:
    import envs

    for key, value in (("episodes", episodes), ("evaluation_index", evaluation_index)):
        least = int(key == "episodes")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise ConfigError(f"{key} must be an integer >= {least} or null (got {value!r}); fix the "
                              f"override {key}=...")
    if seeds is not None and (not isinstance(seeds, list | tuple) or not seeds
                              or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds)):
        raise ConfigError(f"seeds must be a list of training seeds, e.g. seeds=[0,3] (got {seeds!r})")
    if not isinstance(deterministic, bool):
        raise ConfigError(f"deterministic must be true or false (got {deterministic!r})")
    if out is not None and Path(str(out)).name == "results.json":
        raise ConfigError("out=results.json would replace the run's own results; choose another name")
    try:
        envs.worker_count(workers, 1)
    except envs.DatasetError as error:
        raise ConfigError(str(error)) from None


def command_line(argv: list[str]) -> list[str]:
    """Hydra's arguments from ours: the run folder may come first without `run=`; `video=true` is
    short for `video.record=true` (a config node cannot be both a switch and its settings)."""
    arguments = []
    for position, argument in enumerate(argv):
        if position == 0 and "=" not in argument and not argument.startswith("-"):
            argument = f"run={argument}"
        elif argument.split("=", 1)[0] == "video":
            argument = f"video.record={argument.split('=', 1)[1]}"
        arguments.append(argument)
    return arguments


def check_run_folder(arguments: list[str]) -> None:
    """Exit 2 with one `error:` line when `run=` is missing or not a run folder, before Hydra would
    create it (its log file goes into the run folder)."""
    from experiments.restored import RunError, read_config

    given = [a.split("=", 1)[1] for a in arguments if a.startswith("run=")]
    if not given:
        _exit("no run folder: python -m experiments.evaluate <run folder> [options] "
              "(the folder experiments.train wrote, runs/<date>_<algorithm>_<dataset>)")
    try:
        read_config(Path(given[-1]))
    except RunError as error:
        _exit(str(error))


def _exit(message: str):
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


@hydra.main(config_path=CONFIG_DIR, config_name="evaluate", version_base=None)
def main(cfg: DictConfig) -> dict:
    from envs.video import VideoError
    from experiments.restored import RunError
    from experiments.run_folder import FAILURES

    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every restore at INFO
    options = OmegaConf.to_container(cfg, resolve=True)
    try:
        result = evaluate_run(
            options["run"], options["checkpoint"], options["episodes"], options["seeds"], options["point"],
            options["deterministic"], options["evaluation_index"], options["eval"]["workers"],
            options["env"], options["video"], options["out"])
    except (RunError, VideoError, *FAILURES) as error:  # FAILURES: what training turns into `error:`
        _exit(str(error.args[0]) if error.args else str(error))
    summary, where = result["summary"], f"offline step {result['step']}"
    if result["phase"] == "online":
        where = f"online, environment step {result['env_step']} after {result['step']} offline steps"
    written = f"; written to {Path(options['run']) / options['out']}" if options["out"] else ""
    print(f"{summary['score'].replace('_', ' ')} {summary['mean']:.1f} ± {summary['std']:.1f} over "
          f"{summary['seeds']} seed(s), {result['episodes']} episode(s) each, checkpoint "
          f"{result['checkpoint']} ({where}){written}")
    for path in result.get("videos", []):
        print(f"video: {Path(options['run']) / path}")
    return result


if __name__ == "__main__":
    sys.argv[1:] = command_line(sys.argv[1:])
    if not any(a in ("--help", "-h", "--hydra-help", "--cfg", "-c") for a in sys.argv[1:]):
        check_run_folder(sys.argv[1:])
    main()
