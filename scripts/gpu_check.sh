#!/usr/bin/env bash
# GPU checks, run on a lent GPU machine (device tool) from the repo root, as one script:
#   1. scripts/bench.py --device cuda: the performance targets on the GPU (docs/performance.md)
#   2. the default image field on the GPU in 32, bf16-mixed and 16-mixed (runs on GPU unchanged)
#   3. long-tailed peaks1d under 16-mixed with the gradient scaler: finite and accurate
#   4. Field.sample at 512^3 with a 3x256 SIREN: speed and GPU memory (docs/reuse.md)
#   5. samples per second of the hash grid (torch and Triton backends, issue 26) and SIREN 3x256,
#      forward + backward + Adam, batch 2^18 (scripts/bench_encoding.py; docs/performance.md), the
#      hash-grid image run on each backend, and the kernel tests compiled for the GPU
#   6. issue 16 (PARTS=steps): the captured step against eager (scripts/check_graph.py) and time per
#      optimizer step against a plain loop, fp32 vs bf16-mixed and the hash grid at 2^18
#      (scripts/bench_host.py --device cuda --large: a section of $OUT/performance.md)
# PARTS picks what runs: "all" (default: 1-6) or a list of "bench runs sample encoding steps".
# Every part has its own time limit and writes as it goes, so a partial run still reports.
# Results: $OUT/performance.md, $OUT/gpu_results.jsonl, $OUT/gpu.log.
# Needs hydra-core, omegaconf and antlr4 wheels in .whl/ when the machine lacks them (see docs/performance.md).
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
PARTS=${PARTS:-all}
want() { [ "$PARTS" = all ] || [[ " $PARTS " == *" $1 "* ]]; }
cp docs/performance.md "$OUT/performance.md"
if want bench; then
echo "== bench $(date +%T)" >> "$LOG"
timeout ${BENCH_S:-330} python3 scripts/bench.py --device cuda --out "$OUT/performance.md" >> "$LOG" 2>&1 || echo "bench: exit $?" >> "$LOG"
fi
record() {  # name run_dir
  python3 - "$1" "$2" >> "$RES" <<'PY'
import json, sys
m = json.load(open(sys.argv[2] + "/metrics.json"))
keep = {k: m.get(k) for k in ["status", "psnr", "psnr_log", "worst_decade_median", "steps", "fit_time_s", "precision", "device", "nonfinite_steps"]}
print(json.dumps({"check": sys.argv[1], **keep}))
PY
}
run() {  # name dir overrides...
  local name=$1 d=$2; shift 2
  echo "== $name $(date +%T)" >> "$LOG"
  timeout 60 python3 -m nir.cli.train trainer=gpu trainer.enable_progress_bar=false hydra.run.dir=$d "$@" >> "$LOG" 2>&1 && record "$name" $d
}
if want steps; then
  echo "== steps: graph vs eager $(date +%T)" >> "$LOG"
  timeout ${GRAPH_S:-200} python3 scripts/check_graph.py ${GRAPH_CASES:-} > "$OUT/check_graph.log" 2>&1 || echo "check_graph: exit $?" >> "$LOG"
  grep '^{' "$OUT/check_graph.log" >> "$RES"
  echo "== steps: bench_host $(date +%T)" >> "$LOG"
  timeout ${HOST_S:-240} python3 scripts/bench_host.py --device cuda --large --out "$OUT/performance.md" >> "$LOG" 2>&1 || echo "bench_host: exit $?" >> "$LOG"
  run "gpu-preset-default" /tmp/runs/gd trainer.max_steps=2000
  run "gpu-preset-compile" /tmp/runs/gdc trainer.max_steps=2000 compile=true
fi
if want runs; then
for prec in 32 bf16-mixed 16-mixed; do
  run "image-default-2000steps-$prec" /tmp/runs/img_$prec trainer.precision=$prec
done
run "image-default-compile" /tmp/runs/img_compile compile=true
run "peaks1d-log_mse-16-mixed" /tmp/runs/pk_lm16 data=peaks1d loss=log_mse trainer.precision=16-mixed log.images=false
run "peaks1d-log_mse-32" /tmp/runs/pk_lm32 data=peaks1d loss=log_mse trainer.precision=32 log.images=false
run "peaks1d-rel_l2-16-mixed" /tmp/runs/pk_rl16 data=peaks1d loss=rel_l2 trainer.precision=16-mixed log.images=false
fi
if want sample; then
echo "== sample $(date +%T)" >> "$LOG"
timeout 60 python3 scripts/bench_sample.py --model siren --n 512 --chunk 1048576 --device cuda >> "$RES" 2>> "$LOG"
fi
if want encoding; then
echo "== encoding throughput $(date +%T)" >> "$LOG"
timeout ${ENC_S:-150} python3 scripts/bench_encoding.py --device cuda --batch 262144 >> "$RES" 2>> "$LOG"
# issue 26: the same image run on each grid backend, PSNR at equal steps (batch 2^18)
for backend in torch triton; do
  run "image-hashgrid-$backend" /tmp/runs/img_hash_$backend model=hashgrid model.encoding.backend=$backend batch_size=262144
done
python3 -m pytest -q -p no:cacheprovider tests/test_grid_kernels.py >> "$LOG" 2>&1 && echo '{"check": "test_grid_kernels on cuda", "status": "passed"}' >> "$RES"
fi
echo "== done $(date +%T)" >> "$LOG"
cat "$RES"; cat "$OUT/performance.md" 2>/dev/null
