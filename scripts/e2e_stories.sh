#!/usr/bin/env bash
# End to end on the stories corpus (.device/{train,valid}.txt.xz): a 10K tokenizer, token files,
# the plain baseline at the stories-17M shape, then `lmforge train --config stories-17M` for
# EPOCHS (default 2) epochs. Copies metrics, plot, sample and logs to $OUT. A second run in the
# same machine reuses the token files; BASELINE=0 skips the baseline; TRAIN_ARGS adds --set ...;
# CONFIG names another preset or TOML (e.g. stories-moe); RUN names the run's folder (several
# runs may then share the token files side by side).
set -euo pipefail
OUT="${OUT:-/tmp/lmforge-out}"
W=/tmp/e2e
mkdir -p "$W" "$OUT"
lm() { python3 -m lmforge "$@"; }
if [ ! -f "$W/val.bin" ]; then
    xz -T0 -dc .device/train.txt.xz > "$W/train.txt"
    xz -T0 -dc .device/valid.txt.xz > "$W/valid.txt"
    t0=$(date +%s)
    lm tokenizer train "$W/train.txt" --vocab-size 10000 --out "$W/tokenizer.json" --no-progress
    lm tokenizer encode "$W/train.txt" --tokenizer "$W/tokenizer.json" --out "$W/train.bin" --no-progress
    lm tokenizer encode "$W/valid.txt" --tokenizer "$W/tokenizer.json" --out "$W/val.bin" --no-progress
    echo "tokenizer + encoding: $(( $(date +%s) - t0 )) s"
fi
if [ "${BASELINE:-1}" != 0 ]; then
    python3 .device/gpt_baseline.py --d 512 --layers 4 --heads 16 --seq 256 --batch 128 \
        --vocab 10240 --steps 100 | tee "$OUT/e2e-baseline.json"
fi
R="$W/${RUN:-run}"
rm -rf "$R"
t0=$(date +%s)
lm train --config "${CONFIG:-stories-17M}" --data "$W/train.bin" --val-data "$W/val.bin" \
    --tokenizer "$W/tokenizer.json" --out "$R" --set "train.epochs=${EPOCHS:-2}" \
    --set train.progress=false ${TRAIN_ARGS:-} 2>&1 | tee "$OUT/e2e-train.log" | tail -30
echo "train wall time: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/e2e-train.log"
cp "$R/metrics.jsonl" "$R/config.toml" "$OUT/"
cp "$R"/plots/*.png "$R/sample.txt" "$OUT/" 2>/dev/null || true
