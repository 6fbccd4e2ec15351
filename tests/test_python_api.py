"""docs/python-api.md runs as written: its Python blocks, in order, in one namespace (a tiny IQL run
trained, loaded, evaluated and exported through `offrl`)."""

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"


@pytest.mark.integration
def test_the_python_api_page_runs(offline_data, tmp_path, monkeypatch):
    pytest.importorskip("flatbuffers", reason="jax.export serializes with flatbuffers: pip install -e .")
    monkeypatch.chdir(tmp_path)  # runs/ and policy/ of the examples go here
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) == 5
    namespace = {}
    for number, block in enumerate(blocks):
        exec(compile(block, f"{PAGE}:block{number}", "exec"), namespace)
    assert (tmp_path / "runs" / "iql-pendulum" / "results.json").exists()
    result = namespace["result"]
    assert result.scores == [seed["final_score"] for seed in result.results["seeds"]]
    assert (tmp_path / "policy" / "policy.json").exists()


def test_train_turns_keywords_into_the_command_lines_overrides():
    from offrl import overrides_of

    assert overrides_of({"algo": "iql", "algo.expectile": 0.8, "grid.algo.tau": [0.005, 0.01],
                         "online.steps": 0, "skip_done": True, "stage_paths.dynamics": None}) == [
        "algo=iql", "algo.expectile=0.8", "grid.algo.tau=[0.005,0.01]", "online.steps=0", "skip_done=true",
        "stage_paths.dynamics=null"]
