#!/usr/bin/env bash
# The accelerator half of the MJX benchmark (issue 26): environment steps per second of the MJX copy
# of D4RL's Hopper-v4 for 1 to 4096 environments in one program on one GPU, against gymnasium on the
# host for 1, 8 and 64 (benchmarks/mjx.py's gpu preset: 1, 8, 64, 512 and 4096 environments, 1000
# steps per compiled call; its --budget of 360 s stops before a new size, so that the run, one size's
# compilation included, ends within 10 minutes).
#
#   benchmarks/mjx_gpu.sh wheels   # on a machine with a network: mujoco-mjx's wheels (and gpu.sh's)
#                                  # into benchmarks/wheels/, for a GPU machine without one
#   benchmarks/mjx_gpu.sh          # on the GPU machine, from anywhere: installs what is missing,
#                                  # runs, writes benchmarks/mjx-<device>.json and .md
#   benchmarks/mjx_gpu.sh parity   # instead, in its own 10 minutes: the learning parity on Hopper
#                                  # (benchmarks/mjx_hopper_parity.py, both backends side by side,
#                                  # each killed after 570 s; the shared 2-core CPU took 15 min, 4 of
#                                  # them compiling MJX; not run on a GPU yet), writes
#                                  # benchmarks/mjx_hopper_parity-<device>.json and .md
#
# Extra arguments go to `python -m benchmarks mjx` (or mjx_hopper_parity), e.g. `--environments 1 512
# 4096 --steps 500`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=benchmarks/wheels

if [[ "${1:-}" == wheels ]]; then
  shift
  benchmarks/gpu.sh wheels "$@"
  version=${1:-$($PYTHON -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')}
  $PYTHON -m pip download --dest "$WHEELS" --only-binary=:all: --python-version "$version" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    mujoco-mjx
  rm -f "$WHEELS"/jax-* "$WHEELS"/jaxlib-* "$WHEELS"/numpy-* "$WHEELS"/nvidia_* "$WHEELS"/jax_cuda*
  exit 0
fi

if ! $PYTHON -c 'import mujoco.mjx' 2>/dev/null; then
  if [[ -d "$WHEELS" ]]; then
    $PYTHON -m pip install --quiet --no-index --find-links "$WHEELS" mujoco-mjx "gymnasium[mujoco]" \
      flax optax hydra-core scipy h5py tqdm
  else
    $PYTHON -m pip install --quiet mujoco-mjx "gymnasium[mujoco]" flax optax hydra-core scipy h5py tqdm
  fi
fi
$PYTHON -c 'import jax; print("jax", jax.__version__, "devices:", jax.devices())'

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
device=$($PYTHON -c 'import jax; print(jax.devices()[0].device_kind.replace(" ", "-"))')
if [[ "${1:-}" == parity ]]; then
  shift
  exec $PYTHON -m benchmarks mjx_hopper_parity --parallel --timeout 570 \
    --out "benchmarks/mjx_hopper_parity-$device.json" "$@"
fi
exec $PYTHON -m benchmarks mjx --preset gpu --out "benchmarks/mjx-$device.json" "$@"
