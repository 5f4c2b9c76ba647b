# session 7, call 4: the three GPU tests fixed after call 3; (b1) against (b2) under graphs
python3 -m pip install -q --no-index --no-deps --target /tmp/site dist/*.whl 2>&1 | grep -v WARN
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
timeout 120 python3 -m pytest tests/model/test_moe_gpu.py tests/model/test_moe_dispatch.py -m gpu -q -p no:cacheprovider -k "bf16_experts or grouped_mm_matches" > $OUT/gputests.txt 2>&1; tail -2 $OUT/gputests.txt
grep -E "^E |FAILED" $OUT/gputests.txt | head -10
timeout 300 python3 benches/bench_moe.py --configs b1,b2 --warmup 400 --compile-mode reduce-overhead --text .device-enc/train.txt.xz --gpt2 .device-enc/gpt2 --skip-baseline --out $OUT/moe-b1-b2-w13-graphs.json 2>&1 | tail -4
