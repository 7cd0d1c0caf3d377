#!/usr/bin/env bash
# Cost and quality of every method on the embedded MiniLM at one budget:
# trainable parameters, peak memory above baseline, training time, tokens/s.
# Each method runs in its own process, so no run's memory shows in another's.
# Usage: benchmarks/method_costs.sh [budget] [task] [results_dir]
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${1:-tiny}
task=${2:-toy_sentiment}
out=${3:-results/benchmarks/method_costs_${task}_${budget}}
export HF_HUB_OFFLINE=1
for method in head bitfit ln_tuning prompt ptuning ia3 vera lokr prefix adapter_pfeiffer adapter_houlsby \
              lora dora qlora adalora loha full; do
  .venv/bin/harness-run model=minilm task="$task" budget="$budget" seed=0 method="$method" results_dir="$out" \
    || echo "method $method failed (recorded in $out/runs)"
done
.venv/bin/python -m harness.report.table "$out"
