#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and installs the project into it.
# Sourced by scripts/quickstart.sh and scripts/test.sh; safe to run again (it only installs what is missing).
#
# torch: on a machine without an NVIDIA GPU we pin torch==2.13.0, which these CPU machines serve as a CPU
# build from local disk; an unpinned torch would pull several GB of CUDA wheels that cannot be used.
# On a GPU machine the normal (CUDA) build is installed. triton is installed explicitly either way: on the
# CPU its interpreter (TRITON_INTERPRET=1) runs the kernel tests.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MAMBA_DNA_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[env] creating virtual environment in $VENV" >&2
  "$PY" -m venv "$VENV"
fi
# The stamp records what was installed, so a second run starts in a second, not a minute.
STAMP="$VENV/.mamba-dna-installed"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    TORCH_SPEC="torch"
  else
    TORCH_SPEC="torch==2.13.0"
  fi
  echo "[env] installing $TORCH_SPEC, triton and mamba-dna (editable) into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # numpy in the same step: torch imported without it prints a warning on the user's first command
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC" triton numpy 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -c "import torch, triton" # fail loudly if the line above did not install them
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -c "import mamba_dna.cli.main"
  echo "$WANT" >"$STAMP"
fi
export PATH="$VENV/bin:$PATH"
