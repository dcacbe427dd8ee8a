"""python3 -m unimem ARGS: the unimem command line tool, shipped with the package.

`python3 -m unimem info` prints what the `unimem info` executable prints (both
run the same C++ code, tools/cli.cpp); `python3 -m unimem load FILE ...` loads
files as `unimem load` does. The exit status is the tool's: 0 done, 1 failed,
2 bad usage.
"""

import sys

from . import _unimem


def main() -> int:
    # The tool writes through C stdio: what Python buffered goes out first.
    sys.stdout.flush()
    sys.stderr.flush()
    return _unimem._cli(["unimem", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
