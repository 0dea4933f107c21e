#!/usr/bin/env bash
# The whole sb2dask pipeline on a batch cluster: simulate -> train -> infer -> evaluate.
#
# This script is the driver. Each sb2dask command runs its Dask scheduler in this job and submits
# its worker jobs through dask-jobqueue: the CPU pool (deploy/<system>-cpu.yaml) simulates, the GPU
# pool (deploy/<system>-gpu.yaml) trains and predicts. Edit those two files first (account,
# partition/queue, interface, environment), then submit this script from the directory that holds
# deploy/ (the repository root), as a small long job that may itself submit jobs:
#
#     sbatch deploy/run_pipeline.sh                         # SLURM
#     qsub -V deploy/run_pipeline.sh                        # PBS
#     sbatch --export=ALL,N_TRAIN=500000,ENSEMBLE=8 deploy/run_pipeline.sh
#
# or run it with bash on a login node inside tmux. Settings are environment variables (defaults
# below). Rerunning after an interruption resumes: finished simulation chunks and inference
# partitions are kept. A dry run on this machine with tiny settings:
#
#     SB2DASK_CLUSTER=local N_TRAIN=400 N_DETECTOR=400 CHUNK=100 ENSEMBLE=1 EPOCHS=1 \
#         MAX_TRAIN=128 N_SOURCES=20 PERMUTATIONS=10 CAL_VALUE_BINS=1 WORK=/tmp/sb2dask-run \
#         bash deploy/run_pipeline.sh
#
# The driver needs little: 2 cores and a few GiB for the scheduler. EDIT the account/queue lines.
#SBATCH -J sb2dask-pipeline
#SBATCH -c 2
#SBATCH --mem=8G
#SBATCH -t 48:00:00
#SBATCH -o sb2dask-pipeline-%j.out
#PBS -N sb2dask-pipeline
#PBS -l select=1:ncpus=2:mem=8GB
#PBS -l walltime=48:00:00
#PBS -j oe

set -euo pipefail
cd "${PBS_O_WORKDIR:-${SLURM_SUBMIT_DIR:-$PWD}}"

# Where the Dask workers run: slurm | pbs | local | local-gpu | tcp://host:port
if [[ -z "${SB2DASK_CLUSTER:-}" ]]; then
    if [[ -n "${SLURM_JOB_ID:-}" ]]; then SB2DASK_CLUSTER=slurm
    elif [[ -n "${PBS_JOBID:-}" ]]; then SB2DASK_CLUSTER=pbs
    elif command -v sbatch >/dev/null; then SB2DASK_CLUSTER=slurm
    elif command -v qsub >/dev/null; then SB2DASK_CLUSTER=pbs
    else SB2DASK_CLUSTER=local
    fi
fi
WORK=${WORK:-$PWD/sb2dask-run}          # on a file system every compute node sees
N_TRAIN=${N_TRAIN:-200000}              # SB2 training set (Sect. 2 of the paper)
N_DETECTOR=${N_DETECTOR:-60000}         # singles and SB2s for the SB2 detector
CHUNK=${CHUNK:-10000}                   # spectra per simulation task
OUTPUT_GRID=${OUTPUT_GRID:-gaia_dr3_903} # 903 pixels over the Gaia RVS range, as the shipped models
RECIPE=${RECIPE:-realistic}             # paper (Binnenfeld et al., at rest) | realistic | dr4
ENSEMBLE=${ENSEMBLE:-4}                 # networks per target
EPOCHS=${EPOCHS:-75}
MAX_TRAIN=${MAX_TRAIN:-}                # optional cap on training spectra per network
CPU_JOBS=${CPU_JOBS:-8}                 # batch jobs of the CPU pool
GPU_JOBS=${GPU_JOBS:-4}                 # batch jobs (= GPUs) of the GPU pool
CPU_CONFIG=${CPU_CONFIG:-$SB2DASK_CLUSTER-cpu}   # deploy/<name>.yaml or a path
GPU_CONFIG=${GPU_CONFIG:-$SB2DASK_CLUSTER-gpu}
CATALOGUE=${CATALOGUE:-}                # glob of Gaia epoch-spectrum files; empty: a mock one
N_SOURCES=${N_SOURCES:-10000}           # sources of the mock catalogue
PERMUTATIONS=${PERMUTATIONS:-1000}      # permutation-test draws of the evaluation
CAL_VALUE_BINS=${CAL_VALUE_BINS:-4}     # uncertainty calibration: bins of each predicted label

case "$SB2DASK_CLUSTER" in
    slurm|pbs)
        CPU=(--cluster "$SB2DASK_CLUSTER" --jobqueue-config "$CPU_CONFIG" --workers "$CPU_JOBS")
        GPU=(--cluster "$SB2DASK_CLUSTER" --jobqueue-config "$GPU_CONFIG" --workers "$GPU_JOBS");;
    local-gpu)
        CPU=(--cluster local)
        GPU=(--cluster local-gpu);;
    *)  # local, or the address of a running scheduler
        CPU=(--cluster "$SB2DASK_CLUSTER")
        GPU=(--cluster "$SB2DASK_CLUSTER");;
esac

mkdir -p "$WORK"
echo "sb2dask pipeline: cluster $SB2DASK_CLUSTER, output in $WORK ($(date -u +%FT%TZ))"

echo "== 1/4 simulate: $N_TRAIN SB2s for training, $N_DETECTOR singles+SB2s for the detector"
sb2dask simulate --n "$N_TRAIN" --chunk "$CHUNK" --recipe "$RECIPE" \
    $([[ $RECIPE == dr4 ]] || echo --output-grid "$OUTPUT_GRID") \
    --out "$WORK/train.zarr" "${CPU[@]}"
sb2dask simulate --n "$N_DETECTOR" --chunk "$CHUNK" --recipe "$RECIPE" \
    $([[ $RECIPE == dr4 ]] || echo --output-grid "$OUTPUT_GRID") \
    --binary-fraction 0.5 --seed 2 --out "$WORK/detector.zarr" "${CPU[@]}"

echo "== 2/4 train: $ENSEMBLE member(s) per target, $EPOCHS epochs"
sb2dask train --store "$WORK/train.zarr" --detector-store "$WORK/detector.zarr" \
    --out "$WORK/models" --ensemble "$ENSEMBLE" --epochs "$EPOCHS" \
    ${MAX_TRAIN:+--max-train "$MAX_TRAIN"} "${GPU[@]}" > "$WORK/train.json"
# calibrated label uncertainties, from the training store's validation split (never trained on)
sb2dask calibrate --models "$WORK/models" --store "$WORK/train.zarr" --split validation \
    --value-bins "$CAL_VALUE_BINS" --predictions "$WORK/calibration-predictions.npz" \
    > "$WORK/calibration.json"

echo "== 3/4 infer"
if [[ -z "$CATALOGUE" ]]; then
    sb2dask mock-catalogue --out "$WORK/catalogue" --n-sources "$N_SOURCES" > /dev/null
    CATALOGUE="$WORK/catalogue/*.csv.gz"
fi
# $CATALOGUE is left unquoted on purpose: it is a glob
sb2dask infer $CATALOGUE --out "$WORK/results.parquet" --models "$WORK/models" "${GPU[@]}" \
    > "$WORK/infer.json"

echo "== 4/4 evaluate"
sb2dask evaluate --store "$WORK/train.zarr" --models "$WORK/models" \
    --detector-store "$WORK/detector.zarr" --permutations "$PERMUTATIONS" \
    --out "$WORK/evaluation" > /dev/null
echo "done ($(date -u +%FT%TZ)): $WORK/results.parquet, $WORK/evaluation/evaluation.md"
