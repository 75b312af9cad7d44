#!/usr/bin/env bash
# Run bufinspect's GPU tests (pytest -m gpu) on a machine with a CUDA GPU and torch installed.
#
#   scripts/gpu-check.sh            # from the repository root; log in gpu-check.log (or $OUT)
#
# Takes about a minute (it writes one ~1 GB checkpoint under the pytest temp folder). Exit code is
# pytest's. The log starts with the GPU, torch and CUDA versions, for the README's "last run" line.
set -uo pipefail
cd "$(dirname "$0")/.."
log="${OUT:-.}/gpu-check.log"
{
  echo "# bufinspect gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not found"
  python - <<'PY'
import torch
print(f"torch {torch.__version__} cuda {torch.version.cuda} available={torch.cuda.is_available()} "
      f"devices={torch.cuda.device_count()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
PY
} 2>&1 | tee "$log"
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA GPU here: the gpu tests would all be skipped" | tee -a "$log"
  exit 3
fi
missing=$(python - <<'PY'
import importlib.util as u
print(" ".join(m for m in ("numpy", "typer", "rich", "safetensors", "pytest")
               if u.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
  echo "missing python packages: $missing (pip install -e '.[test]' first)" | tee -a "$log"
  exit 3
fi
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout 480 python -m pytest -m gpu -q -rs \
  -p no:cacheprovider --durations=5 tests 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
echo "# exit $rc" | tee -a "$log"
exit "$rc"
