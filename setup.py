"""pip install --no-build-isolation .  — the unimem Python package.

Builds unimem._unimem with CMake (-DUNIMEM_PYTHON=ON: the library and the
pybind11 module, nothing else) for the Python running pip, and installs it
with the package's Python files (python/unimem). Needs what scripts/deps.sh
installs (CMake, Ninja, g++, liburing-dev, nlohmann-json3-dev, pybind11-dev);
nothing is fetched from a package index.
"""
import pathlib
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = pathlib.Path(__file__).parent.resolve()


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build = pathlib.Path(self.build_temp).resolve() / "cmake"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        subprocess.check_call(["cmake", "-S", str(ROOT), "-B", str(build), *generator, "-DCMAKE_BUILD_TYPE=Release",
                               "-DUNIMEM_PYTHON=ON", "-DUNIMEM_BUILD_TESTS=OFF", "-DUNIMEM_BUILD_EXAMPLES=OFF",
                               "-DUNIMEM_BUILD_BENCHMARKS=OFF", f"-DPython_EXECUTABLE={sys.executable}"])
        subprocess.check_call(["cmake", "--build", str(build), "--target", "unimem_python"])
        built = next((build / "python" / "unimem").glob("_unimem*.so"))
        target = pathlib.Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built, target)


setup(
    name="unimem",
    version=(ROOT / "CMakeLists.txt").read_text().split("project(unimem VERSION ")[1].split()[0],
    description="One piece of memory for the CPU, every GPU and other processes; zero copy through DLPack",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=["unimem"],
    package_dir={"": "python"},
    ext_modules=[Extension("unimem._unimem", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
