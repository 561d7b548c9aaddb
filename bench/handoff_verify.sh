#!/usr/bin/env bash
# Issue 18's end-to-end check of the handoff (not run in CI: it needs torch, transformers, trl,
# peft, accelerate and datasets from PyPI, about 4 GB with torch's CUDA wheels):
#   bootstrap → dataset (tiny) → a short SFT → export (HF directory) → `handoff --base <export>`
#   → TRL's SFTTrainer for a few steps on the CPU with Accelerate's CPU config → `models import`
#   → eval on held-out cases → export of the imported model; then the GRPO script for 2 steps
#   against a running `understudy serve` (rewards over HTTP).
# Usage: bench/handoff_verify.sh [UNDERSTUDY_BINARY] [PYTHON]   (PYTHON: a venv with the packages)
set -euo pipefail
binary="${1:-$HOME/.cache/understudy/target/release/understudy}"
python="${2:-python3}"
work="$(mktemp -d)"
data="$work/data"
us() { "$binary" --data-dir "$data" "$@"; }
echo "work dir: $work"
"$python" -c "import torch, transformers, trl, peft, accelerate, datasets; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__)"

us bootstrap --traces 120 --seed 7 --json > "$work/bootstrap.json"
us build-dataset --max-seq-len 1024 --json > "$work/dataset.json"
dataset=$("$python" -c "import json,sys; print(json.load(open(sys.argv[1]))['id'])" "$work/dataset.json")
us train --phase sft --max-steps 60 --batch-size 4 --json > "$work/train.json"
model=$("$python" -c "import json,sys; print(json.load(open(sys.argv[1]))['model_id'])" "$work/train.json")
us export --model "$model" --quant f32 --parity-prompts 1 --json > "$work/export.json" || true
hf=$("$python" -c "import json,sys; print(json.load(open(sys.argv[1]))['dir'] + '/hf')" "$work/export.json")

# SFT through TRL, a few steps on the CPU.
us handoff --dataset "$dataset" --base "$hf" --phase sft --out "$work/handoff-sft" --lr 5e-4 --json > "$work/handoff-sft.json"
(cd "$work/handoff-sft" && PATH="$(dirname "$python"):$PATH" accelerate launch --config_file accelerate/cpu.yaml train_sft.py --max-steps 12) | tee "$work/trl-sft.log" | tail -5
"$python" - "$work/handoff-sft/output/understudy_handoff.json" <<'PY'
import json, sys
lineage = json.load(open(sys.argv[1]))
losses = lineage["losses"]
before, after = lineage["eval_loss_before"], lineage["eval_loss_after"]
print(f"TRL SFT: {lineage['steps']} steps; training loss {losses[0]:.4f} -> {losses[-1]:.4f}; validation loss {before:.4f} -> {after:.4f}")
assert after < before, "the validation loss did not fall"
PY
us models import "$work/handoff-sft/output" --name trl-sft --json > "$work/import.json"
imported=$("$python" -c "import json,sys; print(json.load(open(sys.argv[1]))['id'])" "$work/import.json")
echo "imported: $imported"
us eval --model "$imported" --suite heldout --limit 10 --json > "$work/eval.json"
"$python" -c "import json,sys; r=json.load(open(sys.argv[1])); o=r.get('overall', r.get('summary', {}).get('overall', r)); print('eval on heldout (10 cases):', json.dumps(o)[:400])" "$work/eval.json"
us export --model "$imported" --quant q8_0 --parity-prompts 1 --json > "$work/export-imported.json" && echo "export of the imported model: ok" || echo "export of the imported model: parity check failed (see $work/export-imported.json)"

# GRPO through TRL, scored by the running server.
port=18471
"$binary" --data-dir "$data" serve --port "$port" > "$work/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
us handoff --dataset "$dataset" --base "$hf" --phase grpo --out "$work/handoff-grpo" --rewards-url "http://127.0.0.1:$port" --json > /dev/null
"$python" - "$work/handoff-grpo/handoff.json" <<'PY'
import json, sys
h = json.load(open(sys.argv[1]))
h["hyperparameters"].update(num_generations=4, per_device_batch_size=4, max_completion_length=48)
json.dump(h, open(sys.argv[1], "w"), indent=2)
PY
(cd "$work/handoff-grpo" && PATH="$(dirname "$python"):$PATH" accelerate launch --config_file accelerate/cpu.yaml train_grpo.py --max-steps 2) > "$work/trl-grpo.log" 2>&1 && tail -3 "$work/trl-grpo.log"
"$python" -c "import json,sys; l=json.load(open(sys.argv[1])); print('TRL GRPO:', l['steps'], 'steps; rewards came from', sys.argv[2])" "$work/handoff-grpo/output/understudy_handoff.json" "http://127.0.0.1:$port/api/rewards/score"
grep -c "POST /api/rewards/score" "$work/serve.log" || true
echo "ok: $work"
