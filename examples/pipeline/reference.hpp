// examples/pipeline/reference.hpp — the layer in float64, the yardstick
// both paths are checked against.
#pragma once
#include <string>
#include <vector>

#include "model.hpp"

namespace pipeline {

// Every position's output (positions x dim), one row at a time, in double,
// from the weights in `file`, RoPE's angles computed directly.
std::vector<double> run_reference(const std::string& file, const Config& c);

}  // namespace pipeline
