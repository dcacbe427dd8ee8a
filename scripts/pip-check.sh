#!/usr/bin/env bash
# The Python package as users install it with pip, each time into a fresh venv,
# imported and run from another folder (so that python/unimem is not what imports):
#   index     `pip install .` with the first python3 on PATH: an isolated build,
#             pip fetches the build requirements (pyproject.toml) from the index
#   no index  `pip wheel --no-build-isolation .` with Debian's python3 and its
#             packages (pybind11, CMake, Ninja) plus scikit-build-core, which
#             Debian 12 does not package (installed once from the index here),
#             then the wheel installed into a bare venv: it needs nothing else
# Each checks a Tape, __version__, build_info(), `python3 -m unimem info` (and
# the venv's `unimem` script), and
# ldd of the extension: nothing beyond libc, libstdc++, libgcc_s, libm,
# libdl/libpthread, and liburing and UCX where the build found them (libunimem
# is static, the CUDA driver is loaded at run time).
#   bash scripts/pip-check.sh WORKDIR      (scripts/test.sh runs it after the release build)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:?work folder, e.g. build/release/pip}
index_python=${UNIMEM_INDEX_PYTHON:-python3}
debian_python=${UNIMEM_PYTHON:-/usr/bin/python3}
rm -rf "$work"
mkdir -p "$work"
work=$(cd "$work" && pwd)
quiet_root() { grep -v "Running pip as the 'root' user\|venv. See https://pip.pypa.io" >&2 || true; }

# Imports the package installed in venv $1 from another folder and checks it.
check_venv() {  # VENV WHAT
  local python="$1/bin/python" what=$2
  (cd "$work" && "$python" - "$what" <<'PY'
import subprocess, sys
import unimem
assert "site-packages" in unimem.__file__, unimem.__file__
assert unimem.Tape(4096).take(8).nbytes == 8
info = unimem.build_info()
assert info["version"] == unimem.__version__, info
info_text = subprocess.run([sys.executable, "-m", "unimem", "info"], check=True, capture_output=True, text=True).stdout
assert info_text.startswith(f"unimem {unimem.__version__}\n"), info_text
script = subprocess.run([sys.prefix + "/bin/unimem", "info"], check=True, capture_output=True, text=True).stdout
assert script == info_text, "the unimem script of the venv prints what python3 -m unimem prints"
print(f"pip check ({sys.argv[1]}): unimem {unimem.__version__} from {unimem.__file__}; "
      f"io_uring {info['io_uring']}, CUDA driver {info['cuda_driver']}")
PY
  )
  local ext bad allowed='linux-vdso|(/lib[0-9]*/)?ld-linux|libc\.so|libstdc\+\+\.so|libgcc_s\.so|libm\.so|libdl\.so|libpthread\.so'
  ext=$("$python" -c "import unimem._unimem as m; print(m.__file__)")
  "$python" -c "import unimem, sys; sys.exit(0 if unimem.build_info()['io_uring'] else 1)" && allowed="$allowed|liburing\.so"
  # UCX likewise, where the build found it (unimem.RemotePool: the remote pools' transport).
  "$python" -c "import unimem, sys; sys.exit(0 if hasattr(unimem, 'RemotePool') else 1)" &&
    allowed="$allowed|libucp\.so|libucs\.so|libuct\.so|libucm\.so|libnuma\.so"
  bad=$(ldd "$ext" | awk '{print $1}' | grep -vE "^($allowed)" || true)
  if [ -n "$bad" ]; then
    echo "pip check ($what): $ext needs more than the C and C++ runtimes:" >&2
    ldd "$ext" >&2
    return 1
  fi
  echo "pip check ($what): ldd $(basename "$ext"): $(ldd "$ext" | awk '{print $1}' | grep -v vdso | tr '\n' ' ')"
}

# With an index: an isolated build, as `pip install .` does for a user.
"$index_python" -m venv "$work/index"
"$work/index/bin/python" -m pip install -q . 2> >(quiet_root)
check_venv "$work/index" "pip install ., isolated"

# Without one: the build requirements installed beforehand, a wheel, and that
# wheel in a bare venv.
"$debian_python" -m venv --system-site-packages "$work/tools"
"$work/tools/bin/python" -m pip install -q scikit-build-core 2> >(quiet_root)
"$work/tools/bin/python" -m pip wheel -q --no-build-isolation --no-deps . -w "$work/wheel" 2> >(quiet_root)
"$debian_python" -m venv "$work/bare"
"$work/bare/bin/python" -m pip install -q "$work"/wheel/unimem-*.whl 2> >(quiet_root)
check_venv "$work/bare" "pip wheel --no-build-isolation ., Debian's $($debian_python -c 'import pybind11; print("pybind11", pybind11.__version__)')"
