#!/bin/bash
# Written by `sweep submit`: one array task per run of batch abc123; $1 is the chunk offset.
#SBATCH --output=logs/%A_%a.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
set -u
child=
warned=0
trap 'warned=1; [ -z "$child" ] || kill -USR1 "$child" 2>/dev/null' USR1
trap '[ -n "$child" ] || exit 143; kill -TERM "$child" 2>/dev/null' TERM
offset=${1:?the chunk offset}
line=$((SLURM_ARRAY_TASK_ID + offset + 1))
id=$(sed -n "${line}p" batches/abc123.ids)
if [ -z "$id" ]; then echo "no run on line $line of batches/abc123.ids" >&2; exit 2; fi
echo "$SLURM_JOB_ID ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} $id" >> jobs.log
run=runs/$id
mkdir -p "$run"
sed -n "${line}p" batches/abc123.jsonl > "$run/.run.json.tmp" && mv "$run/.run.json.tmp" "$run/run.json"
export LD_LIBRARY_PATH=/opt/torch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export SWEEP_DEVICE=cuda
if [ "$warned" = 1 ]; then
    echo "sweep: $id got the time-limit warning before training started; exit 75 (a timeout)" >&2
    exit 75
fi
first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_ADDR=$(scontrol show node "$first" -o | sed -n 's/.* NodeAddr=\([^ ]*\).*/\1/p')
export MASTER_ADDR=${MASTER_ADDR:-$first}
export MASTER_PORT=$((15000 + SLURM_JOB_ID % 10000))
srun --kill-on-bad-exit=1 bash -c 'export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID LOCAL_WORLD_SIZE=${SLURM_NTASKS_PER_NODE:-}; exec "$@"' rank "$HOME"/w/bin/sweep-0.1.0 train "$run/run.json" --threads "${SLURM_CPUS_PER_TASK:-1}" >> "$run/train.log" 2>&1 &
child=$!
[ "$warned" = 0 ] || kill -USR1 "$child" 2>/dev/null
while true; do
    wait "$child"
    code=$?
    kill -0 "$child" 2>/dev/null || break
done
if [ "$warned" = 1 ] && { [ "$code" = 0 ] || [ "$code" = 138 ]; } && ! grep -qE '"status": *"(completed|diverged)"' "$run/result.json" 2>/dev/null; then
    echo "sweep: $id stopped at the time-limit warning; exit 75 (a timeout)" >&2
    exit 75
fi
exit "$code"
