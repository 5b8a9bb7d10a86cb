#!/usr/bin/env bash
# GPU checks, run on a lent GPU machine (device tool) from the repo root, as one script:
#   - the default image field on the GPU in 32, bf16-mixed and 16-mixed (issue: runs on GPU unchanged)
#   - long-tailed peaks1d under 16-mixed with the gradient scaler (log_mse, rel_l2): finite, accurate
#   - Field.sample at 512^3 with a 3x256 SIREN: speed and GPU memory (docs/reuse.md)
# Results: $OUT/gpu_results.jsonl and $OUT/gpu.log. Needs hydra-core wheels in .whl/ (see docs).
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
LOG=$OUT/gpu.log; RES=$OUT/gpu_results.jsonl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"
python3 -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__)" | tee -a "$LOG"
record() {  # name run_dir
  python3 - "$1" "$2" >> "$RES" <<'PY'
import json, sys
m = json.load(open(sys.argv[2] + "/metrics.json"))
keep = {k: m.get(k) for k in ["status", "psnr", "psnr_log", "worst_decade_median", "steps", "fit_time_s", "precision", "device", "nonfinite_steps"]}
print(json.dumps({"check": sys.argv[1], **keep}))
PY
}
for prec in 32 bf16-mixed 16-mixed; do
  d=/tmp/runs/img_$prec
  python3 -m nir.train trainer=gpu trainer.precision=$prec trainer.enable_progress_bar=false hydra.run.dir=$d >> "$LOG" 2>&1 && record "image-default-2000steps-$prec" $d
done
for loss in log_mse rel_l2; do
  d=/tmp/runs/peaks_${loss}_16
  python3 -m nir.train data=peaks1d loss=$loss trainer=gpu trainer.precision=16-mixed trainer.enable_progress_bar=false log.images=false hydra.run.dir=$d >> "$LOG" 2>&1 && record "peaks1d-$loss-16-mixed" $d
  d=/tmp/runs/peaks_${loss}_32
  python3 -m nir.train data=peaks1d loss=$loss trainer=gpu trainer.precision=32 trainer.enable_progress_bar=false log.images=false hydra.run.dir=$d >> "$LOG" 2>&1 && record "peaks1d-$loss-32" $d
done
python3 scripts/bench_sample.py --model siren --n 512 --chunk 1048576 --device cuda >> "$RES" 2>> "$LOG"
python3 scripts/bench_sample.py --model siren --n 512 --chunk 262144 --device cuda >> "$RES" 2>> "$LOG"
tail -n 40 "$LOG"; cat "$RES"
