"""What a run writes: metrics.jsonl lines, evaluation records, and results.json."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from omegaconf import OmegaConf

import envs
from experiments.stats import iqm


class MetricsFile:
    """metrics.jsonl: one JSON object per line, flushed as written."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def write(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as out:
            out.write(json.dumps(record) + "\n")

    def truncate(self, step: int, env_step: int) -> None:
        """On resume, drop the lines written after the checkpoint being resumed from (offline
        lines after its gradient step, online lines after its environment step)."""
        if not self.path.exists():
            return

        def kept(line: dict) -> bool:
            if line["type"] in ("pretrain", "validate"):
                return True
            if line.get("phase") == "online":
                return line.get("env_step", 0) <= env_step and env_step > 0
            return line["step"] <= step

        lines = [line for line in self.path.read_text().splitlines() if line and kept(json.loads(line))]
        self.path.write_text("".join(line + "\n" for line in lines))


def episode_count(cfg, phase: str) -> int:
    """Episodes per seed of an evaluation in `phase`: `eval.episodes` offline, `online.episodes` online."""
    return int(cfg.eval.episodes if phase == "offline" else cfg.online.episodes)


def episode_seeds(seeds: list[int], cfg, phase: str, index: int, copies: int = 1) -> np.ndarray:
    """The environment seeds of evaluation number `index`, (seeds x copies, episodes): episodes
    that depend on the seed's value and `index` only (`envs.episode_seeds`: a seed scores the same
    alone or in any batch; the online phase's evaluations continue the offline index). `copies`:
    rows per seed that play the seed's episodes (several candidate policies: experiments/members.py)."""
    return np.repeat(envs.episode_seeds(seeds, index, episode_count(cfg, phase)), copies, axis=0)


def play(policy, info, seeds: list[int], cfg, phase: str, index: int, observation_dim: int,
         copies: int = 1) -> np.ndarray:
    """Every episode's return of evaluation number `index` on the host (gymnasium), (seeds x copies,
    episodes), on the episodes of `episode_seeds`."""
    return envs.evaluate(policy, info, episode_seeds(seeds, cfg, phase, index, copies),
                         observation_dim=observation_dim, workers=cfg.eval.get("workers", "auto"))


def evaluation_entry(returns: np.ndarray, info, phase: str, step: int, env_step: int, seconds: float) -> dict:
    """The record of one evaluation of every seed from its episodes' returns (seeds, episodes)."""
    scores = envs.normalized_score(returns, info)
    return {
        "phase": phase,
        "step": step,
        "env_step": env_step,
        "return": returns.mean(axis=1).tolist(),
        "normalized_score": None if scores is None else scores.mean(axis=1).tolist(),
        "episode_returns": returns.tolist(),
        "seconds": seconds,
    }


def member_ranking(evaluations: list[dict], seed_index: int) -> dict | None:
    """How the algorithm's offline estimates of its members (Uni-O4's AM-Q) rank them against their
    real scores, over a seed's evaluations: the fraction where the best estimate is the best real
    member ("top1") and the fraction of member pairs ordered alike ("pairwise"); None without
    estimates."""
    top, pairs = [], []
    for entry in evaluations:
        members = entry.get("members")
        if not members or "estimates" not in members:
            continue
        real = np.asarray(members["normalized_score"] or members["return"])[seed_index]
        estimate = np.asarray(members["estimates"])[seed_index]
        top.append(real[np.argmax(estimate)] == real.max())
        i, j = np.triu_indices(len(real), k=1)
        pairs.extend(np.sign(real[i] - real[j]) == np.sign(estimate[i] - estimate[j]))
    if not top:
        return None
    return {"top1": float(np.mean(top)), "pairwise": float(np.mean(pairs)) if pairs else None}


def _scores(evaluations: list[dict], i: int) -> list[float]:
    return [e["normalized_score"][i] for e in evaluations if e["normalized_score"]]


def mean_of_last(scores: list[float], count: int) -> float | None:
    """The mean of the last `count` evaluation scores (all of them when there are fewer): the
    statistic of TD3+BC's paper (the last 10 evaluations) and MOPO's; None without scores."""
    return float(np.mean(scores[-count:])) if scores else None


def regret(episodes: list, seed_index: int, info) -> float | None:
    """CORL's online regret: the mean over the seed's online training episodes of (1 - success) on
    goal-reaching tasks; elsewhere of (1 - normalized return / 100). None without episodes."""
    mine = [e for e in episodes if e[1] == seed_index]
    if not mine:
        return None
    successes = [e[4] for e in mine if e[4] is not None]
    if successes:
        return float(1.0 - np.mean(successes))
    scores = envs.normalized_score([e[2] for e in mine], info)
    return None if scores is None else float(np.mean(1.0 - np.asarray(scores) / 100.0))


def results(cfg, seeds: list[int], history: dict, info, updates_per_second: float,
            compile_seconds: float, stopped: dict, online_runner=None, grid=None) -> dict:
    """results.json: per seed the final score (the last evaluation), the best, the mean of the last
    `eval.mean_of_last` evaluations (offline, and online when it ran), every evaluation's score and
    episodes; mean, std and IQM over the seeds that were not stopped early. With a
    hyperparameter grid (experiments/grid.py), `seeds` holds one entry per training with its grid
    values under "grid", "summary" is None and "grid" gives each point's summary."""
    offline = [e for e in history["evaluations"] if e.get("phase", "offline") == "offline"]
    online = [e for e in history["evaluations"] if e.get("phase") == "online"]
    gridded = grid is not None and bool(grid.fields)
    last_count = int(OmegaConf.select(cfg, "eval.mean_of_last", default=10))
    per_seed = []
    for i, seed in enumerate(seeds):
        offline_scores, online_scores = _scores(offline, i), _scores(online, i)
        last = (online or offline)[-1] if (online or offline) else None
        entry = {
            "seed": seed,
            "final_return": last["return"][i] if last else None,
            "final_score": (online_scores or offline_scores or [None])[-1],
            "best_score": max(online_scores or offline_scores) if (online_scores or offline_scores)
            else None,
            # over the phase of the final score (online when it ran), at most `mean_of_last` evaluations
            "last_mean_score": mean_of_last(online_scores or offline_scores, last_count),
            "last_mean_evaluations": min(last_count, len(online_scores or offline_scores)),
            "evaluation_scores": {e["step"]: e["normalized_score"][i] for e in offline
                                  if e["normalized_score"]},
            "episode_returns": {e["step"]: e["episode_returns"][i] for e in offline},
        }
        if any("members" in e for e in offline):  # every member's offline scores (Uni-O4)
            entry["members"] = {e["step"]: {name: None if values is None else values[i]
                                            for name, values in e["members"].items()}
                                for e in offline if "members" in e}
            entry["member_ranking"] = member_ranking(offline, i)
        if online:
            entry.update({
                "offline_score": offline_scores[-1] if offline_scores else None,
                "online_final_score": online_scores[-1] if online_scores else None,
                "online_best_score": max(online_scores) if online_scores else None,
                "offline_last_mean_score": mean_of_last(offline_scores, last_count),
                "online_evaluation_scores": {e["env_step"]: e["normalized_score"][i] for e in online
                                             if e["normalized_score"]},
                "online_episode_returns": {e["env_step"]: e["episode_returns"][i] for e in online},
                "regret": regret(history["episodes"], i, info),
            })
        if i in stopped:
            entry["stopped"] = {"step": stopped[i][0], "reason": stopped[i][1]}
        if gridded:
            entry["grid"] = grid.point_of(i)
        per_seed.append(entry)
    out = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "summary": None if gridded else summarize(per_seed, bool(online)),
        "seeds": per_seed,
        "updates_per_second_per_seed": updates_per_second,
        "updates_per_second_total": updates_per_second * len(seeds),
        "compile_seconds": compile_seconds,
        "devices": [str(d) for d in jax.devices()],
    }
    if gridded:
        out["grid"] = {"fields": list(grid.fields), "points": [
            {"values": point, "summary": summarize([s for s in per_seed if s["grid"] == point],
                                                   bool(online))} for point in grid.points]}
    if online_runner is not None:
        out["online"] = {"updates_per_second_per_seed": online_runner.updates_per_second,
                         "compile_seconds": online_runner.compile_seconds,
                         "episodes": history["episodes"]}
    return out


def summarize(per_seed: list[dict], online: bool) -> dict | None:
    """Mean, std and IQM of the final scores (and the mean best score, mean of the last evaluations,
    offline score and regret) over the entries not stopped early; None when none has a score."""
    counted = [s for s in per_seed if "stopped" not in s and s["final_score"] is not None]
    summary = None
    if counted:
        finals = [s["final_score"] for s in counted]
        summary = {"final_score_mean": float(np.mean(finals)), "final_score_std": float(np.std(finals)),
                   "final_score_iqm": iqm(finals),
                   "best_score_mean": float(np.mean([s["best_score"] for s in counted])),
                   "last_mean_score_mean": float(np.mean([s["last_mean_score"] for s in counted])),
                   "seeds_counted": [s["seed"] for s in counted]}
        rankings = [s["member_ranking"] for s in counted if s.get("member_ranking")]
        if rankings:  # how well the algorithm's own estimates rank its members (Uni-O4's AM-Q)
            summary["member_ranking_top1_mean"] = float(np.mean([r["top1"] for r in rankings]))
        if online:
            offline_scores = [s["offline_score"] for s in counted if s["offline_score"] is not None]
            summary["offline_score_mean"] = float(np.mean(offline_scores)) if offline_scores else None
            regrets = [s["regret"] for s in counted if s["regret"] is not None]
            summary["regret_mean"] = float(np.mean(regrets)) if regrets else None
    return summary
