#!/usr/bin/env bash
# The checks that need a GPU, in one script of at most 8 minutes: run it first on any machine with
# CUDA (`bash benchmarks/device_check.sh`), and put its figures in docs/benchmarks.md with the GPU's name.
#   1. the CUDA tests (tests/test_cuda.py: terminals, metrics, torch.compile, a search, a ViT and
#      other targets: CUDA = CPU);
#   2. the throughput benchmark on CUDA: torch eager against torch.compile (fp32, bf16, fp16);
#   3. a short EfficientNet-Lite0 search on CUDA with --runtime auto (torch or torch.compile);
#   4. when the machine's CPU has AMX (lscpu's amx_bf16), the CPU runtimes at fp32 and bf16 (issue #22's
#      figures for a CPU with AMX; `lscpu` names the CPU in $OUT/cpu.txt).
# It installs nothing that needs the network beyond `pip install -e .[test,efficientnet]` when the
# package is missing. Output: the console, and $OUT (default ./device-check) for the files.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-device-check}"
mkdir -p "$OUT"
python -c "import sycam_dsl" 2>/dev/null || python -m pip install --quiet -e ".[test,efficientnet]"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
status=0
echo "== 1. CUDA tests"
timeout 140 python -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_forward_speed.py \
    2>&1 | tee "$OUT/tests.txt" || status=1
echo "== 2. throughput on CUDA"
timeout 120 python benchmarks/bench_throughput.py --device cuda --runtime torch,compile \
    --models bundled,resnet18,efficientnet_lite0 --precision fp32,bf16,fp16 --repeat 2 --images 16 \
    2>&1 | tee "$OUT/throughput.txt" || status=1
echo "== 3. a 60 s Lite0 search on CUDA"
python - "$OUT/images" <<'PY'
import sys
from pathlib import Path
from PIL import Image
from sycam_dsl.bundled.shapes import render
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
for i, img in enumerate(render(20, seed=7, size=224)[0]):
    Image.fromarray(img).save(out / f"{i:03d}.png")
PY
timeout 120 python -m sycam_dsl.cli synth --model efficientnet_lite0 --images "$OUT/images" --device cuda \
    --runtime auto --time 60 --batch-size auto --cache-dir "$OUT/cache" -o "$OUT/lite0" 2>&1 | tail -25 \
    | tee "$OUT/search.txt" || status=1
lscpu | tee "$OUT/cpu.txt" | grep -E "Model name|^CPU\(s\)"
if grep -q amx_bf16 "$OUT/cpu.txt"; then
    echo "== 4. the CPU runtimes at fp32 and bf16 (AMX)"
    timeout 90 python benchmarks/bench_throughput.py --runtime torch,onnxruntime,openvino \
        --models bundled,efficientnet_lite0 --precision fp32,bf16 --images 4 --repeat 1 --min-seconds 0.2 \
        2>&1 | tee "$OUT/cpu_runtimes.txt" || status=1
fi
exit $status
