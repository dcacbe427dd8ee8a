// main() for the allocation benchmarks (tape_benchmark.cpp, grid_benchmark.cpp).
#include <benchmark/benchmark.h>

BENCHMARK_MAIN();
