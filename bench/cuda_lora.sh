#!/usr/bin/env bash
# The one short CUDA check for a machine with an NVIDIA GPU (issue: Stage 4, item 7): build with
# `--features cuda` from PyPI's CUDA 13 wheels (see README), then print tokens/s and memory for
# SFT steps of the tiny preset and LoRA r8 steps of SmolLM2-135M on cuda:0, next to the CPU.
# Usage: bash bench/cuda_lora.sh [SMOLLM2.gguf]   (default: ~/.cache/understudy/models/…Q4_1.gguf)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
gguf="${1:-$HOME/.cache/understudy/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
python3 -m pip install -q nvidia-cuda-nvcc==13.2.86 nvidia-nvvm==13.2.86 nvidia-cuda-crt==13.2.86 \
  nvidia-cuda-runtime==13.2.86 nvidia-cublas nvidia-curand
cuda="$(python3 -c 'import site; print(site.getsitepackages()[0])')/nvidia/cu13"
cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)"
export CUDA_ROOT="$cuda" PATH="$cuda/bin:$PATH" CUDA_COMPUTE_CAP="$cap" LD_LIBRARY_PATH="$cuda/lib:${LD_LIBRARY_PATH:-}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/understudy/target-cuda}"
cargo build --release --locked --features cuda --bin understudy
bin="$CARGO_TARGET_DIR/release/understudy"
"$bin" bench sft --device cuda --batch-size 8 --seq-len 512 --steps 10
"$bin" bench lora --device cuda --model "$gguf" --batch-size 4 --seq-len 512 --steps 10
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
"$bin" bench lora --device cpu --model "$gguf" --batch-size 1 --seq-len 256 --steps 2
