#!/usr/bin/env bash
# Build the frozen appliance with PyInstaller (appliance.spec).
#
#   build/build.sh            -> dist/appliance            (one file: copy it to a host and run)
#   build/build.sh --onedir   -> dist/appliance-onedir/    (a folder; starts faster)
#
# Environment: VENV (default .venv), APPLIANCE_ONEDIR=1 (same as --onedir),
# SOURCE_DATE_EPOCH (build date recorded in the binary).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
mode=onefile
if [[ ${1:-} == --onedir || ${APPLIANCE_ONEDIR:-0} == 1 ]]; then mode=onedir; fi
export APPLIANCE_ONEDIR=$([[ $mode == onedir ]] && echo 1 || echo 0)

if ! "$VENV/bin/python" -c "import PyInstaller" 2>/dev/null; then
  echo "build.sh: PyInstaller missing; run: $VENV/bin/pip install -e '.[dev]'" >&2
  exit 1
fi

started=$(date +%s)
"$VENV/bin/python" -m PyInstaller --noconfirm --log-level WARN \
  --workpath "build/out/pyinstaller-$mode" --distpath dist appliance.spec
took=$(( $(date +%s) - started ))

out=dist/appliance
[[ $mode == onedir ]] && out=dist/appliance-onedir
echo "== built $out ($mode) in ${took}s"
"$VENV/bin/python" build/sizes.py "$out" --top 15
exe=$out; [[ $mode == onedir ]] && exe=$out/appliance
"$exe" --version
