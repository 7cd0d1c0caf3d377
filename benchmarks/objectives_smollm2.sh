#!/usr/bin/env bash
# Generative objectives on the embedded SmolLM2-135M-Instruct with LoRA:
# DPO and PPO (verifiable reward) on the one-step arithmetic preferences, SFT
# on the one-step arithmetic instructions, then the report. Each objective
# runs as its own process. On a CPU the budgets are capped in wall seconds
# (MAX_TIME_S, default 600 for DPO/PPO and twice that for SFT): one step of
# budget `tiny` (batch 32) takes tens of seconds there. On a GPU set
# MAX_TIME_S=null to run the budgets whole.
# Usage: benchmarks/objectives_smollm2.sh [results_dir]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/benchmarks/objectives_smollm2}
cap=${MAX_TIME_S:-600}
sft_cap=$([ "$cap" = null ] && echo null || echo $((cap * 2)))
export HF_HUB_OFFLINE=1
# Forgetting is scored on the local WikiText-2 copy when there is one (the Hub's is unreachable offline).
general_text=(forgetting=none)
if [ -f "${DATA_ROOT:-../shared/data}/wikitext2/test.txt" ]; then general_text=(data_root="${DATA_ROOT:-../shared/data}"); fi
run() { .venv/bin/harness-run model=smollm2_135m method=lora seed=0 results_dir="$out" "${general_text[@]}" "$@" || echo "failed: $* (recorded in $out/runs)"; }
run task=arithmetic_1step_pref objective=dpo budget=tiny budget.max_time_s="$cap"
run task=arithmetic_1step_pref objective=ppo budget=tiny budget.max_time_s="$cap"
run task=arithmetic_1step objective=sft budget=small budget.max_time_s="$sft_cap"
.venv/bin/harness-report "$out"
