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
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --constraint=a100
set -u
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
'/opt/my sweep/bin/sweep' train "$run/run.json" --threads "${SLURM_CPUS_PER_TASK:-1}" >> "$run/train.log" 2>&1 &
child=$!
trap 'kill -USR1 "$child" 2>/dev/null' USR1
trap 'kill -TERM "$child" 2>/dev/null' TERM
while true; do
    wait "$child"
    code=$?
    kill -0 "$child" 2>/dev/null || break
done
exit "$code"
