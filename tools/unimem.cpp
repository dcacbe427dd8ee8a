// tools/unimem.cpp — the `unimem` executable: main() hands its arguments to
// the tool's commands (tools/cli.cpp), which the Python package shares.
#include <string>
#include <vector>

#include "cli.hpp"

int main(int argc, char** argv) { return unimem::cli::run(std::vector<std::string>(argv, argv + argc)); }
