"""Export one training's policy of a run to run without this codebase: serialized StableHLO.

    python -m experiments.export runs/2026-12-05_iql_hopper-medium --out policy/ [--seed 0]
        [--checkpoint N] [--platforms cpu,cuda]

Writes into the `--out` folder (default: <run>/export/seed<S>):
- policy.jaxexport: `jax.export`'s serialization of the deterministic policy, raw observations
  (batch, obs_dim) float32 -> actions (batch, act_dim) float32 in the environment's own bounds, for
  any batch size; the network parameters, the state normalization and the action rescaling are
  constants inside it;
- policy.json: its inputs and outputs (shapes, dtypes, action bounds), platforms, source run;
- README.md: how to call it with nothing but JAX installed.

Reloading needs only `jax` (a version that reads this serialization: the same or newer):

    from jax import export
    policy = export.deserialize(open("policy/policy.jaxexport", "rb").read())
    actions = policy.call(observations)

ONNX is not written: the maintained JAX-to-ONNX converter, jax2onnx (0.17.1), requires
orbax-checkpoint < 0.11.37, and this project orbax-checkpoint >= 0.12, so the two cannot be installed
together (docs/python-api.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

POLICY_FILE = "policy.jaxexport"
SPEC_FILE = "policy.json"
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def export_policy(run_dir, out=None, seed: int | None = None, checkpoint: int | None = None,
                  platforms=("cpu",), point: dict | None = None) -> Path:
    """Write the deterministic policy of training seed `seed` (None: the run's first) of the run in
    `run_dir` to the folder `out` (see the module docstring); returns the folder."""
    import jax
    import jax.numpy as jnp
    from jax import export

    from experiments.restored import restore

    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown or not platforms:
        raise ValueError(f"--platforms {','.join(platforms)}: choose among {', '.join(PLATFORMS)}")
    restored = restore(run_dir, checkpoint)
    training = restored.select(None if seed is None else [int(seed)], point)[0]
    source, (low, high) = restored.source(training), restored.action_bounds()
    out = Path(out) if out is not None else Path(run_dir) / "export" / f"seed{source['seed']}"
    function, key = restored.acting_function(training), jax.random.key(0)  # deterministic: key unused

    batch, = export.symbolic_shape("batch")
    exported = export.export(jax.jit(lambda observations: function(observations, key)),
                             platforms=list(platforms))(
        jax.ShapeDtypeStruct((batch, restored.observation_dim), jnp.float32))
    out.mkdir(parents=True, exist_ok=True)
    (out / POLICY_FILE).write_bytes(exported.serialize())
    spec = {
        "format": "jax.export serialized StableHLO (jax.export.deserialize)",
        "jax_version": jax.__version__,
        "calling_convention_version": exported.calling_convention_version,
        "platforms": list(platforms),
        "inputs": [{"name": "observations", "shape": ["batch", restored.observation_dim], "dtype": "float32",
                    "description": "raw observations as the environment gives them (normalization inside)"}],
        "outputs": [{"name": "actions", "shape": ["batch", restored.action_dim], "dtype": "float32",
                     "low": low.tolist(), "high": high.tolist(),
                     "description": "deterministic actions in the environment's own bounds"}],
        "source": source,
    }
    (out / SPEC_FILE).write_text(json.dumps(spec, indent=1))
    (out / "README.md").write_text(readme(spec))
    return out


def readme(spec: dict) -> str:
    source, (inputs,), (outputs,) = spec["source"], spec["inputs"], spec["outputs"]
    return f"""# Exported policy

Seed {source['seed']} of the run `{source['run']}` at checkpoint {source['checkpoint']} ({source['phase']}
step {source['step']}), serialized with jax.export (JAX {spec['jax_version']}; platforms:
{', '.join(spec['platforms'])}).

- input `observations`: float32, shape (batch, {inputs['shape'][1]}): {inputs['description']}
- output `actions`: float32, shape (batch, {outputs['shape'][1]}), between {outputs['low']} and
  {outputs['high']}: {outputs['description']}

```python
import numpy as np
from jax import export

policy = export.deserialize(open("{POLICY_FILE}", "rb").read())
actions = np.asarray(policy.call(np.zeros((1, {inputs['shape'][1]}), np.float32)))
```
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one `error:` line and exit 2, as every command of the project
        print(f"error: {message} (usage: python -m experiments.export <run folder> [--out DIR] "
              "[--seed S] [--checkpoint N] [--platforms cpu,cuda])", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    parser = _Parser(prog="python -m experiments.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="the run folder experiments.train wrote")
    parser.add_argument("--out", help="output folder (default: <run>/export/seed<S>)")
    parser.add_argument("--seed", type=int, help="the training seed (default: the run's first)")
    parser.add_argument("--checkpoint", type=int, help="a kept checkpoint's index (default: the newest)")
    parser.add_argument("--platforms", default="cpu", help="comma-separated: cpu, cuda, rocm, tpu")
    args = parser.parse_args(argv)
    from experiments.restored import RunError, read_config
    from experiments.run_folder import FAILURES

    try:
        read_config(Path(args.run))
        out = export_policy(args.run, args.out, args.seed, args.checkpoint, tuple(args.platforms.split(",")))
    except ImportError as error:  # jax.export's serialization needs flatbuffers
        parser.exit(2, f"error: {error}; pip install -e . installs it\n")
    except (RunError, ValueError, *FAILURES) as error:  # ValueError: --platforms
        parser.exit(2, f"error: {str(error.args[0]) if error.args else error}\n")
    print(f"exported to {out} ({POLICY_FILE}, {SPEC_FILE}, README.md)")


if __name__ == "__main__":
    main()
