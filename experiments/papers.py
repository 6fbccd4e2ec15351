"""The published numbers our runs are compared with (experiments/paper_scores.yaml): which entry
matches a dataset of ours, closest data first (the same D4RL version, then other versions; Minari's
re-recordings of D4RL AntMaze with D4RL's files), and what each entry says."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

PAPER_SCORES = Path(__file__).with_name("paper_scores.yaml")
# Variants compared with their algorithm's published numbers.
PAPER_ALGO = {"cql_jaxcql": "cql"}


def paper_names(dataset: str) -> list[tuple[str, str]]:
    """The names `dataset` may have in the paper tables, the closest first, each with the dataset
    versions compared ("" when the same data): a D4RL file is compared with its own version, then
    with the other versions of the same task; Minari's re-recordings of D4RL AntMaze with D4RL's
    v2 files, then v0 (IQL's tables)."""
    source, _, name = dataset.partition("/")
    if source == "d4rl":
        task = re.fullmatch(r"(.+)-v(\d+)", name)
        if not task:
            return [(name, "")]
        others = [v for v in ("2", "0", "1") if v != task[2]]
        return [(name, "")] + [(f"{task[1]}-v{v}", f"ours D4RL v{task[2]}, published D4RL v{v}")
                               for v in others]
    maze = re.fullmatch(r"D4RL/antmaze/(.+)-v(\d+)", name) if source == "minari" else None
    if maze:
        return [(f"antmaze-{maze[1]}-v{v}", f"ours Minari v{maze[2]}, published D4RL v{v}")
                for v in ("2", "0")]
    return []


def paper_name(dataset: str) -> tuple[str | None, bool]:
    """The closest name of `dataset` in the paper tables, and whether the comparison is approximate
    (other data: another D4RL version, or Minari's re-recording)."""
    names = paper_names(dataset)
    return (names[0][0], bool(names[0][1])) if names else (None, False)


def load_paper_scores(path: Path = PAPER_SCORES) -> dict:
    return yaml.safe_load(path.read_text())


def published(papers: dict, algo: str, dataset: str, metric: str | None, sources: list[str] | None):
    """Every entry for this algorithm and dataset (and metric, when given) among `sources` (all when
    None), the closest data first, then in the file's order (papers before reproductions): a list of
    (value, source, metric, published dataset name, versions compared: "" when the same data)."""
    found = []
    for rank, (name, versions) in enumerate(paper_names(dataset)):
        for order, entry in enumerate(papers["scores"]):
            if (entry["algo"] == PAPER_ALGO.get(algo, algo) and metric in (None, entry["metric"])
                    and (not sources or entry["source"] in sources) and name in entry["scores"]):
                found.append(((rank, order), (entry["scores"][name], entry["source"], entry["metric"],
                                              name, versions)))
    return [match for _, match in sorted(found, key=lambda item: item[0])]


def paper_score(papers: dict, algo: str, dataset: str, metric: str, sources: list[str] | None):
    """(value, source, versions compared) of the closest entry; (None, None, "") when none."""
    matches = published(papers, algo, dataset, metric, sources)
    return (matches[0][0], matches[0][1], matches[0][4]) if matches else (None, None, "")


def mean_of(value) -> float:
    return float(value[0] if isinstance(value, list) else value)
