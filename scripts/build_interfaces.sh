#!/usr/bin/env bash
# Build the ROS 2 interface packages under ros2_ws/src into the virtual environment
# with plain CMake, the way the ROS wheels themselves are laid out, so nothing has
# to be sourced at run time. Usage: build_interfaces.sh VENV BUILD_DIR PKG...
set -euo pipefail
venv=$(cd "$1" && pwd); build_root=$2; shift 2
py="$venv/bin/python"

# The wheels' exported CMake files name the include dirs of the machine they were
# built on; point them at this venv's Python and numpy headers.
py_inc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
np_inc=$("$py" -c 'import numpy; print(numpy.get_include())')
# (grep finds nothing once a previous run rewrote them: not an error, hence `|| true`.)
{ grep -rlZ --include='*.cmake' '/opt/python/cp311-cp311' "$venv/share" 2>/dev/null || true; } \
  | xargs -0 -r sed -i \
      -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#${np_inc}#g" \
      -e "s#/opt/python/cp311-cp311/include/python3.11#${py_inc}#g"

export AMENT_PREFIX_PATH="$venv"
export PATH="$venv/bin:$PATH"
for pkg in "$@"; do
  src="ros2_ws/src/$pkg"
  [ -f "$src/package.xml" ] || { echo "no package at $src" >&2; exit 1; }
  echo "building $pkg"
  cmake -S "$src" -B "$build_root/$pkg" -DBUILD_TESTING=OFF \
    -DCMAKE_PREFIX_PATH="$venv" -DCMAKE_INSTALL_PREFIX="$venv" \
    -DPython3_EXECUTABLE="$py" -DPYTHON_EXECUTABLE="$py" >"$build_root/$pkg.log" 2>&1 \
    || { tail -40 "$build_root/$pkg.log" >&2; exit 1; }
  cmake --build "$build_root/$pkg" -j "$(nproc)" >>"$build_root/$pkg.log" 2>&1 \
    || { tail -40 "$build_root/$pkg.log" >&2; exit 1; }
  cmake --install "$build_root/$pkg" >>"$build_root/$pkg.log" 2>&1 \
    || { tail -40 "$build_root/$pkg.log" >&2; exit 1; }
done
