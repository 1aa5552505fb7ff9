#!/usr/bin/env bash
# One-shot, idempotent environment setup for a Debian 12 / Python 3.11 machine with
# no ROS installed: apt packages, .venv with torch + ROS 2 Jazzy wheels, the interface
# packages built into the venv, and llava3d_ros installed editable with its extras.
# `make setup` calls this only when one of its inputs changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
start=$(date +%s)
log() { printf '[setup %3ss] %s\n' "$(( $(date +%s) - start ))" "$*"; }

# --- apt: compilers for the interface build, EGL/Mesa for headless rendering,
# libusb for open3d's import.
apt_pkgs=(cmake g++ make git python3-venv libusb-1.0-0 libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 libglu1-mesa)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- venv and pip packages.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# No pip cache: it would hold a second copy of every downloaded wheel (about 2 GB) beside
# the 3.7 GB venv, on CI machines whose disk can be nearly full.
pip=("$VENV/bin/python" -m pip --disable-pip-version-check --no-cache-dir -q)
free_mb=$(df -Pm . | awk 'NR==2 {print $4}')
if [ "${free_mb:-0}" -lt 5000 ]; then
  log "WARNING: ${free_mb} MB free here; the venv needs about 4 GB and pip unpacks beside it"
fi
# torch first, from the machine's local CPU build; the constraint keeps it there.
"$VENV/bin/python" -c 'import torch' 2>/dev/null || { log "pip: torch"; "${pip[@]}" install -c constraints.txt torch==2.13.0; }
log "pip: ROS 2 wheels (this machine has no ROS install)"
"${pip[@]}" install -c constraints.txt -r requirements/ros-wheels.txt

# --- the package itself, editable, with its dependencies (setup.cfg) and the extras this
# checkout uses: evaluation, head training, development tools.
log "pip: llava3d_ros[eval,train,dev] (editable)"
"${pip[@]}" install -c constraints.txt --no-build-isolation -e ".[eval,train,dev]"

# --- ROS 2 interface packages, built into the venv (nothing to source at run time).
log "building interface packages"
mkdir -p build/ros2_ws
scripts/build_interfaces.sh "$VENV" build/ros2_ws tf2_msgs llava3d_interfaces

"$VENV/bin/python" - <<'PY'
import torch, rclpy, open3d  # noqa: F401
from llava3d_interfaces.action import Ground  # noqa: F401
from tf2_msgs.msg import TFMessage  # noqa: F401
assert torch.__version__.startswith("2.13.0"), torch.__version__
PY
log "done"
