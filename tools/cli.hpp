// tools/cli.hpp — the `unimem` command line tool as a function.
//
// The executable's main() and the Python module (`python3 -m unimem`) both
// call it, so the tool has one implementation.
#pragma once

#include <string>
#include <vector>

namespace unimem::cli {

// Runs the tool with `args` as main() gets them (args[0] is the program's
// name): `unimem info`, `unimem load ...` (tools/cli.cpp lists them). Writes
// to stdout and stderr through C stdio and flushes both before it returns.
// Returns the exit status: 0 done, 1 failed (one line on stderr), 2 bad
// usage. Never throws. Not for concurrent calls (the progress bar's state is
// shared).
int run(const std::vector<std::string>& args) noexcept;

}  // namespace unimem::cli
