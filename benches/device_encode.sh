#!/usr/bin/env bash
# Encoding benchmark on the GPU machine's CPU cores (run through the device tool with the abi3
# wheel in dist/ and the stories corpus + GPT-2 files in .device/ carried). JSON under $OUT.
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-benches/results}"
python3 -m pip install -q --no-index --no-deps --target /tmp/site dist/*.whl
export PYTHONPATH=/tmp/site
echo "cores: $(nproc); $(lscpu | grep 'Model name' | sed 's/  */ /g')"
mkdir -p /tmp/data
xz -T0 -dc .device/train.txt.xz > /tmp/data/train.txt
threads=$(nproc)
# parts 1 and 4 with HF tokenizers; scaling and worst cases without it (at ~1.2 MB/s on one
# thread, HF alone would take minutes per thread count), and one JSON per run, so a run cut off
# by the device's time limit keeps what the earlier ones measured
common=(--input /tmp/data/train.txt --gpt2-dir .device/gpt2 --max-bytes "${MAX_BYTES:-50000000}"
    --tmp-dir /tmp/data)
python3 benches/bench_encode.py "${common[@]}" --parts 1,4 \
    --out "$OUT/encode-${threads}t-single.json" "$@"
python3 benches/bench_encode.py "${common[@]}" --parts 2,3 --skip-hf \
    --threads-list "1,2,4,8,$threads" --worst-timeout 30 \
    --out "$OUT/encode-${threads}t-scaling.json" "$@"
python3 benches/bench_encode.py --input .device/train.txt.xz --gpt2-dir .device/gpt2 \
    --vocab gpt2 --parts 5 --files-whole-input --tmp-dir /tmp/data \
    --out "$OUT/encode-files-whole-${threads}t.json"
