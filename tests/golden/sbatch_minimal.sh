#!/bin/bash
# Written by `sweep submit`: one array task per run of batch abc123; $1 is the chunk offset.
#SBATCH --output=logs/%A_%a.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
set -u
offset=${1:?the chunk offset}
line=$((SLURM_ARRAY_TASK_ID + offset + 1))
id=$(sed -n "${line}p" batches/abc123.ids)
if [ -z "$id" ]; then echo "no run on line $line of batches/abc123.ids" >&2; exit 2; fi
echo "$SLURM_JOB_ID ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} $id" >> jobs.log
run=runs/$id
mkdir -p "$run"
sed -n "${line}p" batches/abc123.jsonl > "$run/.run.json.tmp" && mv "$run/.run.json.tmp" "$run/run.json"
export LD_LIBRARY_PATH="$HOME"/.cache/sweep/libtorch-2.11.0/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
"$HOME"/w/bin/sweep-0.1.0 train "$run/run.json" --threads "${SLURM_CPUS_PER_TASK:-1}" >> "$run/train.log" 2>&1 &
child=$!
trap 'kill -USR1 "$child" 2>/dev/null' USR1
trap 'kill -TERM "$child" 2>/dev/null' TERM
while true; do
    wait "$child"
    code=$?
    kill -0 "$child" 2>/dev/null || break
done
exit "$code"
