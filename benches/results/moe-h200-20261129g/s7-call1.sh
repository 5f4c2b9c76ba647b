# session 7, call 1: GPU tests (bf16 experts with float32 masters), then (a1) against (a2) = (a1) with bf16 experts, under graphs
python3 -m pip install -q --no-index --no-deps --target /tmp/site dist/*.whl 2>&1 | grep -v WARN
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
timeout 200 python3 -m pytest tests/kernels tests/model/test_moe_gpu.py tests/optim/test_optim_gpu.py tests/train/test_moe_training.py -m gpu -q -p no:cacheprovider > $OUT/gputests.txt 2>&1; tail -4 $OUT/gputests.txt
grep -E "^E |FAILED" $OUT/gputests.txt | head -20
timeout 360 python3 benches/bench_moe.py --configs a1,a2 --warmup 400 --compile-mode reduce-overhead --text .device-enc/train.txt.xz --gpt2 .device-enc/gpt2 --skip-baseline --out $OUT/moe-a1-a2-graphs.json 2>&1 | tail -4
