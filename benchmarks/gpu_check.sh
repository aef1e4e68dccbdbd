#!/usr/bin/env bash
# The throughput check for one H100 (or any CUDA GPU): ViT-B/16 with each freeze strategy, eager and compiled,
# then ViT-L/16, Swin-B, DeiT-B, the ResNet+ViT hybrid and DenseNet-121 (full fine-tuning), bf16 at 224 px,
# synthetic batches of 128; prints one Markdown table (see benchmarks/train_throughput.py for each column).
# It needs torch, transformers, accelerate and timm, not `datasets`, and it reads chexpert_hf from this checkout,
# so it runs without installing the project. Extra arguments go to train_throughput.py (e.g. --batch-size 256,
# or --data PREPARED_DIR --workers 14 where `datasets` is installed). On a CPU: `--quick --device cpu`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" >&2
exec python benchmarks/train_throughput.py --set h100 "$@"
