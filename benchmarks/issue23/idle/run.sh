#!/bin/bash
# before/after speed, idle machine, back to back: before, after (round A) then after, before (round B)
PY=/work/main/.venv/bin/python
IQL="--algos iql --widths 256 64 --seeds 1 --dataset-size 100000 --chunk 200 --repeats 5 --no-pipeline --no-torch --matmul-sizes 256 512 --matmul-seconds 0.2"
MOPO="--dataset-size 20000 --seeds 1 --width 64 --batch-size 256 --option rollout_length=5 --option rollout_batch=5000 --option rollout_freq=250 --option dynamics.validate_every=50 --dynamics-chunks 3 --repeats 3 --matmul-sizes 256 --matmul-seconds 0.1"
ONLINE="--dataset local/pendulum-mixed --steps 300 --widths 64 --seeds 1 --d3rlpy-threads 1"
side() { # side measurement round
  if [ $1 = before ]; then cd /tmp/before; mod=experiments.benchmark; [ $2 != iql ] && mod=$mod.$2; cmd="$PY -m $mod";
  else cd /tmp/after; m=$2; [ $2 = iql ] && m=updates; cmd="$PY -m benchmarks $m"; fi
  opts=$IQL; [ $2 = mopo ] && opts=$MOPO; [ $2 = online ] && opts=$ONLINE
  echo "== $1 $2 $3 $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  PYTHONPATH=$PWD $cmd $opts --out /tmp/speed/$2-$1-$3.json > /tmp/speed/$2-$1-$3.log 2>&1; echo "rc $? $(date +%T)"
}
for m in iql online mopo; do side before $m A; side after $m A; side after $m B; side before $m B; done
