#!/usr/bin/env bash
# The accelerator benchmark (issue 16): trainings per program on one GPU, in one short run.
#
#   benchmarks/gpu.sh wheels   # on a machine with a network: the wheels the GPU machine may lack,
#                              # into benchmarks/wheels/ (jax, jaxlib, numpy and CUDA left out)
#   benchmarks/gpu.sh          # on the GPU machine, from the repository root or anywhere:
#                              # installs what is missing, runs, writes benchmarks/gpu-<device>.json|md
#
# JAX with CUDA is expected on the GPU machine (checked first); the rest comes from
# benchmarks/wheels/ when it exists (no network needed), else from the package index. PyTorch is
# timed when it is importable there (its CUDA wheels are too large to carry). Sizes, timed seconds
# and the time budget are benchmarks/gpu.py's full preset (about 7 minutes of
# measurements, then evaluation over 1, 2 and one worker process per host core, `eval.workers`,
# under a minute estimated); extra arguments are passed on to it, e.g. `benchmarks/gpu.sh --algos iql`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=benchmarks/wheels
PACKAGES=(flax optax chex distrax orbax-checkpoint hydra-core "gymnasium[mujoco]" scipy tqdm h5py)

if [[ "${1:-}" == wheels ]]; then
  shift
  version=${1:-$($PYTHON -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')}
  mkdir -p "$WHEELS"
  $PYTHON -m pip download --dest "$WHEELS" --only-binary=:all: --python-version "$version" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    "${PACKAGES[@]}"
  rm -f "$WHEELS"/jax-* "$WHEELS"/jaxlib-* "$WHEELS"/numpy-* "$WHEELS"/nvidia_* "$WHEELS"/jax_cuda*
  du -sh "$WHEELS"
  exit 0
fi

$PYTHON - <<'EOF'
import jax
print("jax", jax.__version__, "devices:", jax.devices())
if jax.default_backend() != "gpu":
    print("warning: no GPU backend; the benchmark runs on", jax.default_backend())
EOF

missing=$($PYTHON - <<'EOF'
import importlib.util
modules = {"flax": "flax", "optax": "optax", "chex": "chex", "distrax": "distrax",
           "orbax": "orbax-checkpoint", "hydra": "hydra-core", "gymnasium": "gymnasium[mujoco]",
           "mujoco": "gymnasium[mujoco]", "scipy": "scipy", "tqdm": "tqdm", "h5py": "h5py"}
print(" ".join(sorted({package for module, package in modules.items()
                       if importlib.util.find_spec(module) is None})))
EOF
)
if [[ -n "$missing" ]]; then
  echo "installing: $missing"
  if [[ -d "$WHEELS" ]]; then
    # shellcheck disable=SC2086
    $PYTHON -m pip install --quiet --no-index --find-links "$WHEELS" $missing
  else
    # shellcheck disable=SC2086
    $PYTHON -m pip install --quiet $missing
  fi
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # the peak memory figures are then the programs' own
exec $PYTHON -m benchmarks gpu --torch "$@"
