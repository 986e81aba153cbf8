#!/usr/bin/env bash
# cluster/local.sh [start|stop] [NUM_GPUS]
# A local Ray head for trying raydr's jobs as on a cluster: it declares logical GPUs so that
# fractional validator reservations (num_gpus=0.25) schedule on a laptop, while the code itself
# runs on whatever torch sees (the CPU here). Token auth, Ray 2.60's default, is handled by
# starting the head and using the jobs CLI with the same RAY_AUTH_MODE.
set -euo pipefail
cmd=${1:-start}
gpus=${2:-1}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}   # set RAY_AUTH_MODE=token to keep auth on
case "$cmd" in
  start)
    ray start --head --num-gpus="$gpus" --dashboard-host=127.0.0.1 --disable-usage-stats
    echo
    echo "submit with:  RAY_AUTH_MODE=$RAY_AUTH_MODE ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env cluster/runtime_env.yaml -- raydr train jobs/scifact-train.yaml ray.num_gpus=null"
    ;;
  stop)
    ray stop
    ;;
  *)
    echo "usage: cluster/local.sh [start|stop] [NUM_GPUS]" >&2
    exit 2
    ;;
esac
