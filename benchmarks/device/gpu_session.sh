#!/usr/bin/env bash
# One lent GPU session (at most 9 minutes): the speed of each study's course-scale training, as one
# markdown table, $OUT/gpu_table.md (benchmarks/device/gpu_numbers.py measures and writes it).
#
#  1. ResNet n=2 at 256x256, batch 32 (bf16 autocast, channels_last, as `resnet train` runs on CUDA):
#     training images/s of torch_bn, own bn and own gn, eager and with --compile, and the projected
#     time of the whole course-scale study (30,000 images x 50 epochs x 11 runs) at each rate;
#  2. Slot Attention, the course preset's spatial-broadcast model (128x128, batch 64): steps/s eager
#     and compiled, and the projected time of 100,000 steps;
#  3. MathQA: training examples/s of models (b) lstm_attn and (d) bert_finetune, each a short
#     `col775 mathqa train` on the course problems where prepare_carry.py carried them, else on
#     generated ones; (d)'s encoder is MiniLM's architecture with random weights (speed does not
#     depend on the weights, and the weights do not fit in what travels).
# Each stage has its own time limit (220 + 130 + 2 x 80 s on the GPU, with about 25 s of start-up: under
# 9 minutes in all), and rows are written as they are measured, so a stage cut short keeps what it measured.
#
# Prepare here first: .venv/bin/python benchmarks/device/prepare_carry.py; then run it through the
# device tool with carry [".devcarry"], the command `bash benchmarks/device/gpu_session.sh` and
# timeout_s 560. Check it here on the CPU, every stage for a few steps at tiny sizes:
#     DEVICE=cpu OUT=/tmp/gpu-check bash benchmarks/device/gpu_session.sh
set -u
OUT=${OUT:-/tmp/gpu-out}
CARRY=${CARRY:-.devcarry}
PY=${PY:-python3}
W=${W:-/tmp/gpu-runs}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT" "$W"
rm -f "$OUT/rows.jsonl"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 COL775_NO_PROGRESS=1
if [ "$DEVICE" = cpu ]; then  # the check: every stage, a few steps, tiny sizes
    SIZE=32 BATCH=4 SLOTS=demo STEPS="--warmup 1 --steps 2" MQ_STEPS=3 RESNET_S=900 SLOTS_S=600 MATHQA_S=600
    MQ_DATA=(--synthetic-train 64 --synthetic-dev 8 --synthetic-test 8 --cache-dir "$W/cache")
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
    SIZE=256 BATCH=32 SLOTS=course STEPS="--warmup 15 --steps 40" MQ_STEPS=100 RESNET_S=220 SLOTS_S=130 MATHQA_S=80
    MQ_DATA=(--synthetic-dev 64 --synthetic-test 64 --cache-dir "$W/cache")
fi
if [ -f "$CARRY/mathqa/train.json" ]; then
    MQ_DATA=(--data "$CARRY/mathqa")
fi
GLOVE=random
[ -f "$CARRY/glove.mathqa.50d.txt" ] && GLOVE=$CARRY/glove.mathqa.50d.txt
stamp() { echo "== $(date +%T) $*"; }
exec > >(tee "$OUT/session.log") 2>&1

stamp environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

stamp "resnet n=2, ${SIZE}px, batch $BATCH: eager and compiled"
timeout $RESNET_S "$PY" benchmarks/device/gpu_numbers.py resnet --device "$DEVICE" --size $SIZE --batch $BATCH \
    $STEPS --out "$OUT"
echo "resnet rc $?"

stamp "slot attention, the $SLOTS preset: eager and compiled"
timeout $SLOTS_S "$PY" benchmarks/device/gpu_numbers.py slots --device "$DEVICE" --preset $SLOTS $STEPS --out "$OUT"
echo "slots rc $?"

stamp "mathqa (b) lstm_attn and (d) bert_finetune, $MQ_STEPS training steps each"
MINILM=$W/minilm-random  # MiniLM's architecture and tokenizer (carried) with random weights
"$PY" - "$CARRY/minilm" "$MINILM" <<'EOF'
import sys
from transformers import AutoConfig, AutoModel, AutoTokenizer
source, target = sys.argv[1:]
AutoModel.from_config(AutoConfig.from_pretrained(source)).save_pretrained(target)
AutoTokenizer.from_pretrained(source).save_pretrained(target)
EOF
for model in lstm_attn bert_finetune; do
    encoder=()
    [ $model = bert_finetune ] && encoder=(--encoder-path "$MINILM" --encoder-name "MiniLM-L6, random weights")
    timeout $MATHQA_S "$PY" -m col775 mathqa train --preset course --model $model --glove "$GLOVE" "${MQ_DATA[@]}" \
        "${encoder[@]}" --epochs 1 --max-steps-per-epoch $MQ_STEPS --beam-size 1 --device "$DEVICE" \
        --out "$W/mathqa-$model" --force >"$W/mathqa-$model.log" 2>&1
    echo "mathqa $model rc $?"; tail -n 3 "$W/mathqa-$model.log"
done
"$PY" benchmarks/device/gpu_numbers.py mathqa "$W"/mathqa-*/ --out "$OUT"

stamp table
"$PY" benchmarks/device/gpu_numbers.py table --out "$OUT"
stamp done
