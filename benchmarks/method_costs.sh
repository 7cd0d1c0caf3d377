#!/usr/bin/env bash
# Cost of every method on the embedded MiniLM at one budget: trainable
# parameters, peak memory above baseline, training time and throughput.
# Usage: benchmarks/method_costs.sh [budget] [results_dir]   (default: tiny)
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${1:-tiny}
out=${2:-results/benchmarks/method_costs_$budget}
export HF_HUB_OFFLINE=1
.venv/bin/harness-run -m model=minilm task=toy_sentiment budget="$budget" seed=0 \
  method=head,bitfit,ln_tuning,prompt,ia3,vera,lokr,prefix,adapter_pfeiffer,adapter_houlsby,lora,dora,qlora,adalora,loha,ptuning,full \
  results_dir="$out"
.venv/bin/python -m harness.report.table "$out"
