#!/usr/bin/env bash
# Everything lmforge checks on a GPU, in one device call (the device tool, with dist/ holding the
# abi3 wheel built on the dev machine and .device/ holding the stories corpus and the baseline):
#   bash scripts/gpu_check.sh [tests] [bench] [e2e] [profile] [ddp] [moe] [attention] [balance]
#   (default: the first three)
# tests: pytest -m gpu; bench: benches/bench_model.py (SHAPES, default 124M,1B); e2e: the
# stories-17M run of scripts/e2e_stories.sh; profile: scripts/profile_train.py on the e2e's token
# file (after e2e); ddp: benches/bench_ddp.py (GPUS, default 2); moe: benches/bench_moe.py
# (MOE_ARGS); attention: benches/bench_attention.py (SDPA backends, FlexAttention and lmforge's
# kernels alone) then benches/tune_attention.py (the kernels' block configurations, GPU time);
# balance: benches/bench_balance.py (MoE in-batch balancing's offsets alone, BALANCE_ARGS).
# TESTS narrows the tests part to some files, PYTEST_ARGS adds options. Logs, JSON and PNGs go
# to $OUT (never checkpoints). Parts may run side by side on different GPUs (CUDA_VISIBLE_DEVICES).
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/lmforge-out}"
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site
python3 -c "import lmforge" 2>/dev/null ||
    python3 -m pip install -q --no-index --no-deps --target /tmp/site dist/*.whl
python3 -c "import lmforge, torch; print('lmforge', lmforge.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())"
parts="${*:-tests bench e2e}"
for part in $parts; do
    case "$part" in
    tests)
        python3 -m pytest ${TESTS:-tests} -m gpu -q -p no:cacheprovider --maxfail=5 ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/gpu-tests.log" | tail -15
        ;;
    bench)
        python3 benches/bench_model.py --shapes "${SHAPES:-124M,1B}" ${BENCH_ARGS:-} \
            --out "$OUT/bench-model.json" 2>&1 | tee "$OUT/bench-model.log" | tail -25
        ;;
    e2e)
        bash scripts/e2e_stories.sh
        ;;
    profile)
        python3 scripts/profile_train.py --config stories-17M --data /tmp/e2e/train.bin \
            --out "$OUT/profile-train-17M.txt" ${PROFILE_ARGS:-} 2>&1 | tail -5
        ;;
    ddp)
        [ -f /tmp/e2e/train.txt ] || { mkdir -p /tmp/e2e && xz -T0 -dc .device/train.txt.xz >/tmp/e2e/train.txt; }
        python3 benches/bench_ddp.py --text /tmp/e2e/train.txt --gpt2 .device/gpt2 \
            --gpus "${GPUS:-2}" --out "$OUT/bench-ddp.json" 2>&1 | tee "$OUT/bench-ddp.log" | tail -8
        ;;
    moe)
        python3 benches/bench_moe.py ${MOE_ARGS:-} --out "$OUT/bench-moe.json" 2>&1 |
            tee "$OUT/bench-moe.log" | tail -12
        ;;
    attention)
        python3 benches/bench_attention.py --out "$OUT/bench-attention.json" 2>&1 |
            tee "$OUT/bench-attention.log" | tail -20
        python3 benches/tune_attention.py --out "$OUT/tune-attention.json" 2>&1 |
            tee "$OUT/tune-attention.log" | grep -v -i warn | tail -40
        ;;
    balance)
        python3 benches/bench_balance.py ${BALANCE_ARGS:-} --out "$OUT/bench-balance.json" 2>&1 |
            tee "$OUT/bench-balance.log" | grep -v -i warn | tail -12
        ;;
    *)
        echo "unknown part $part (tests, bench, e2e, profile, ddp, moe, attention, balance)" >&2
        exit 2
        ;;
    esac
done
