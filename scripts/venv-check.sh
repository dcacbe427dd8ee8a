#!/usr/bin/env bash
# The Python package beside pinned Hugging Face releases: makes a venv (build/venv)
# from python3 on PATH (pyenv's, not Debian's: Debian's torch is too old for
# transformers 5), installs torch (CPU), transformers and safetensors at the
# versions below and unimem itself, then runs python/tests/test_transformers.py
# there (unimem.transformers against transformers' own from_pretrained, on the CPU).
# Called by scripts/test.sh after the release configuration; runs on its own too.
# A venv whose pins match is kept between runs (a clean clone makes it once).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=build/venv
python=${UNIMEM_VENV_PYTHON:-python3}
requirements=(torch==2.13.0 transformers==5.17.0 safetensors==0.8.0 numpy==2.4.6 pytest==9.2.0)
# What building unimem with --no-build-isolation needs from the venv (its
# build backend and pybind11, as pyproject.toml asks; CMake, Ninja and g++ come
# from scripts/deps.sh).
build_requirements=(scikit-build-core==1.1.2 pybind11==3.1.0)

stamp="$venv/unimem-requirements.txt"
wanted="${requirements[*]} ${build_requirements[*]}"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q "${requirements[@]}" "${build_requirements[@]}" 2>&1 |
    { grep -vE "Running pip as the 'root' user|Location '.*' is ignored" || true; } >&2
  echo "$wanted" >"$stamp"
fi
# unimem into the venv, as README's install line, built in a folder of its own.
"$venv/bin/python" -m pip install -q --no-build-isolation --no-deps --force-reinstall \
  -C build-dir=build/venv-pip . 2>&1 |
  { grep -vE "Running pip as the 'root' user|Location '.*' is ignored" || true; } >&2

# From /tmp, so that the installed package is the one imported.
(cd /tmp && "$OLDPWD/$venv/bin/python" -m pytest -q -rs -p no:cacheprovider "$OLDPWD/python/tests/test_transformers.py")
