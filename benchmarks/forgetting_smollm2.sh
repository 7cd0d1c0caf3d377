#!/usr/bin/env bash
# Forgetting on the embedded SmolLM2-135M-Instruct (harness/forgetting.py): LoRA SFT on arithmetic_1step and DPO
# on arithmetic_1step_pref, each at a gentle and a high learning rate, 8 steps of batch 8, WikiText-2 scored before
# and after (the local copy under DATA_ROOT, default ../shared/data); then the report (column and plot).
# Usage: benchmarks/forgetting_smollm2.sh [results_dir]       (about 8 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/benchmarks/forgetting_smollm2}
export HF_HUB_OFFLINE=1
common=(model=smollm2_135m method=lora data_root="${DATA_ROOT:-../shared/data}" budget=tiny budget.max_steps=8
  budget.eval_steps=8 budget.batch_size=8 budget.max_eval_samples=16 seed=0 results_dir="$out")
for lr in 2e-4 1e-2; do
  .venv/bin/harness-run "${common[@]}" task=arithmetic_1step objective=sft method.lr="$lr"
  .venv/bin/harness-run "${common[@]}" task=arithmetic_1step_pref objective=dpo method.lr="$lr"
done
.venv/bin/harness-report "$out"
