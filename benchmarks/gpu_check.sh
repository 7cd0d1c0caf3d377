#!/usr/bin/env bash
# One prepared check of the CUDA paths, sized for a short loan of a GPU machine:
#   MiniLM on toy_sentiment at budget tiny with full, lora, qlora (4-bit NF4 base) and dora;
#   SmolLM2-135M with LoRA: SFT on arithmetic_1step and DPO on arithmetic_1step_pref, in bf16;
# then one line per run: device, precision, train peak memory (CUDA allocator on a GPU, RSS on CPU),
# tokens/s, MFU and the peak it was set against; and the report.
#
#   benchmarks/gpu_check.sh [results_dir]          on a CUDA machine (fails fast without one)
#   benchmarks/gpu_check.sh --cpu [results_dir]    the same flow on CPU: fp32, 4-bit skipped (its CUDA kernels
#                                                  are what a GPU check is for), MiniLM runs capped at 5 x STEPS_CPU
#                                                  steps and SmolLM2 runs at STEPS_CPU (default 4)
set -euo pipefail
cd "$(dirname "$0")/.."
cpu=false
if [ "${1:-}" = "--cpu" ]; then cpu=true; shift; fi
out=${1:-results/benchmarks/gpu_check}
bin=${BIN:-.venv/bin}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if $cpu; then
  precision=fp32; methods=(full lora dora); lm_steps=(budget.max_steps="${STEPS_CPU:-4}" budget.eval_steps="${STEPS_CPU:-4}")
  cls_steps=(budget.max_steps=$((5 * ${STEPS_CPU:-4})) budget.eval_steps=$((5 * ${STEPS_CPU:-4})))
  export CUDA_VISIBLE_DEVICES=""
else
  "$bin/python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: use --cpu')"
  "$bin/python" -c "import torch; print(torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())"
  precision=bf16; methods=(full lora qlora dora); lm_steps=(); cls_steps=()
fi
# Causal-LM runs score WikiText-2 before and after training (harness/forgetting.py): the local copy when there is one.
general_text=(forgetting=none)
if [ -f "${DATA_ROOT:-../shared/data}/wikitext2/test.txt" ]; then general_text=(data_root="${DATA_ROOT:-../shared/data}"); fi
run() { "$bin/harness-run" seed=0 results_dir="$out" force=true "$@" || echo "failed: $* (recorded in $out/runs)"; }
for method in "${methods[@]}"; do
  run model=minilm task=toy_sentiment budget=tiny method="$method" train.precision="$precision" "${cls_steps[@]}"
done
run model=smollm2_135m method=lora task=arithmetic_1step objective=sft budget=tiny budget.max_eval_samples=32 \
  train.precision="$precision" "${general_text[@]}" "${lm_steps[@]}"
run model=smollm2_135m method=lora task=arithmetic_1step_pref objective=dpo budget=tiny budget.max_eval_samples=32 \
  train.precision="$precision" "${general_text[@]}" "${lm_steps[@]}"
"$bin/python" - "$out" <<'EOF'
import json, sys
from pathlib import Path
rows = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1], "runs").glob("????????????????.json"))]
print(f"{'model':14s} {'objective':9s} {'method':6s} {'status':8s} {'prec':5s} {'train peak MiB':>14s} "
      f"{'tokens/s':>9s} {'MFU %':>6s}  peak")
for r in sorted(rows, key=lambda r: r.get("finished_at") or ""):
    mem, comp, time_ = r.get("memory") or {}, r.get("compute") or {}, r.get("time") or {}
    peak = mem.get("train_peak_bytes")
    mfu = comp.get("mfu")
    print(f"{r['model']:14s} {r.get('objective') or 'cls':9s} {r['method']:6s} {r['status']:8s} "
          f"{(r.get('identity') or {}).get('precision', '?'):5s} "
          f"{peak / 2**20 if peak else float('nan'):14.0f} {time_.get('train_tokens_per_second') or float('nan'):9.0f} "
          f"{100 * mfu if mfu else float('nan'):6.1f}  {comp.get('peak_source')} ({mem.get('source')})")
EOF
"$bin/harness-report" "$out"
