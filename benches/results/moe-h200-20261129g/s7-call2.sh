# session 7, call 2: the fixed GPU test; (a1)/(a2) kernel profiles (default compile); (b1)/(b2) under graphs
python3 -m pip install -q --no-index --no-deps --target /tmp/site dist/*.whl 2>&1 | grep -v WARN
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
timeout 100 python3 -m pytest tests/model/test_moe_gpu.py -m gpu -q -p no:cacheprovider -k bf16_experts 2>&1 | grep -E "^E |passed|failed" | head -8
timeout 260 python3 benches/bench_moe.py --configs a1,a2 --warmup 50 --steps 20 --profile $OUT/prof --text .device-enc/train.txt.xz --gpt2 .device-enc/gpt2 --skip-baseline --out $OUT/moe-a1-a2-prof.json 2>&1 | tail -3
timeout 230 python3 benches/bench_moe.py --configs b1,b2 --warmup 200 --compile-mode reduce-overhead --text .device-enc/train.txt.xz --gpt2 .device-enc/gpt2 --skip-baseline --out $OUT/moe-b1-b2-graphs.json 2>&1 | tail -3
