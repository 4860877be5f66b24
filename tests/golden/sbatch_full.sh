#!/bin/bash
# Written by `sweep submit`: one array task per run of batch 18c0ffee; $1 is the chunk offset.
#SBATCH --output=logs/%A_%a.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
#SBATCH --partition=gpu
#SBATCH --account=myproject
#SBATCH --qos=normal
#SBATCH --time=04:00:00
#SBATCH --mem=64G
#SBATCH --cpus-per-task=8
#SBATCH --gpus-per-node=1
#SBATCH --constraint=a100
set -u
child=
warned=0
trap 'warned=1; [ -z "$child" ] || kill -USR1 "$child" 2>/dev/null' USR1
trap '[ -n "$child" ] || exit 143; kill -TERM "$child" 2>/dev/null' TERM
offset=${1:?the chunk offset}
line=$((SLURM_ARRAY_TASK_ID + offset + 1))
id=$(sed -n "${line}p" batches/18c0ffee.ids)
if [ -z "$id" ]; then echo "no run on line $line of batches/18c0ffee.ids" >&2; exit 2; fi
echo "$SLURM_JOB_ID ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} $id" >> jobs.log
run=runs/$id
mkdir -p "$run"
sed -n "${line}p" batches/18c0ffee.jsonl > "$run/.run.json.tmp" && mv "$run/.run.json.tmp" "$run/run.json"
module load cuda/12.1
export OMP_NUM_THREADS=8
export LD_LIBRARY_PATH='/opt/lib torch'/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export SWEEP_DEVICE=cuda
if [ "$warned" = 1 ]; then
    echo "sweep: $id got the time-limit warning before training started; exit 75 (a timeout)" >&2
    exit 75
fi
'/opt/my sweep/bin/sweep' train "$run/run.json" --threads "${SLURM_CPUS_PER_TASK:-1}" >> "$run/train.log" 2>&1 &
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
