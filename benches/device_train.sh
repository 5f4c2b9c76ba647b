#!/usr/bin/env bash
# Trainer benchmark on the GPU machine's 16 CPU cores (run through the device tool, with the
# abi3 wheel in dist/ and the stories corpus in .device/ carried). Writes JSON under $OUT.
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-benches/results}"
python3 -m pip install -q --no-index --no-deps --target /tmp/site dist/*.whl
export PYTHONPATH=/tmp/site
python3 -c "import lmforge, sys; print('lmforge', lmforge.__version__, 'python', sys.version.split()[0])"
echo "cores: $(nproc); $(lscpu | grep 'Model name' | sed 's/  */ /g'); $(ldd --version | head -1)"
mkdir -p /tmp/data
xz -T0 -dc .device/train.txt.xz > /tmp/data/train.txt
python3 -m pytest tests -q -p no:cacheprovider 2>&1 | tail -2
threads=$(nproc)
python3 benches/bench_train.py --input /tmp/data/train.txt --threads "$threads" \
    --out "$OUT/train-stories220-${threads}t.json"
python3 benches/bench_train.py --input /tmp/data/train.txt --repeat-input 5 --threads "$threads" \
    --tmp-dir /tmp/data --out "$OUT/train-stories1100-${threads}t.json"
