// Which bytes of a tensor each device holds (gpu/split_part.hpp), on every
// machine: the three cuts of a matrix and of a rank-3 tensor, checked
// element by element against the layout the file has, and the refusals
// load_safetensors makes before it allocates anything.
#include "gpu/split_part.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "testing.hpp"

namespace unimem::gpu::detail {
namespace {

TensorInfo tensor(std::vector<std::uint64_t> shape, DType dtype = DType::F32, std::uint64_t offset = 1024) {
  TensorInfo t{"w", dtype, std::move(shape), offset, 0};
  t.bytes = dtype_bytes(dtype);
  for (std::uint64_t n : t.shape) t.bytes *= n;
  return t;
}

// The file offsets of every element of `part`, in the part's row-major order.
std::vector<std::uint64_t> offsets_of(const SplitPart& part, std::size_t esize) {
  std::vector<std::uint64_t> out;
  for (std::uint64_t r = 0; r < part.rows; ++r) {
    for (std::uint64_t b = 0; b < part.bytes; b += esize) out.push_back(part.file_offset + r * part.file_pitch + b);
  }
  return out;
}

// The same, computed from the shapes: element (i0, .., in) of the part is
// element (.., i_dim + begin, ..) of the tensor.
std::vector<std::uint64_t> expected_offsets(const TensorInfo& t, std::size_t dim, std::uint64_t begin,
                                            std::uint64_t count) {
  std::vector<std::uint64_t> part_shape = t.shape;
  part_shape[dim] = count;
  std::uint64_t elements = 1;
  for (std::uint64_t n : part_shape) elements *= n;
  std::vector<std::uint64_t> out;
  for (std::uint64_t e = 0; e < elements; ++e) {
    std::uint64_t rest = e, flat = 0, stride = 1;
    for (std::size_t i = part_shape.size(); i-- > 0;) {
      std::uint64_t index = rest % part_shape[i];
      rest /= part_shape[i];
      if (i == dim) index += begin;
      flat += index * stride;
      stride *= t.shape[i];
    }
    out.push_back(t.file_offset + flat * dtype_bytes(t.dtype));
  }
  return out;
}

TEST(SplitPart, ReplicateGivesEveryDeviceTheWholeTensor) {
  const TensorInfo t = tensor({6, 10});
  for (std::size_t i = 0; i < 3; ++i) {
    const SplitPart p = split_part(t, Split::replicate, 3, i);
    EXPECT_EQ(p.shape, t.shape);
    EXPECT_EQ(p.file_offset, t.file_offset);
    EXPECT_EQ(p.bytes, t.bytes);
    EXPECT_EQ(p.rows, 1u);
    EXPECT_EQ(p.part_begin, 0u);
  }
}

TEST(SplitPart, RowsAndColumnsCutEqualPartsWhereTheFileHoldsThem) {
  for (const std::vector<std::uint64_t>& shape :
       {std::vector<std::uint64_t>{8, 6}, std::vector<std::uint64_t>{4, 3, 6}, std::vector<std::uint64_t>{12}}) {
    for (std::size_t devices : {1u, 2u, 3u}) {
      if (shape.front() % devices != 0 || shape.back() % devices != 0) continue;
      const TensorInfo t = tensor(shape, DType::BF16);
      for (Split split : {Split::rows, Split::columns}) {
        const std::size_t dim = split == Split::rows ? 0 : shape.size() - 1;
        std::uint64_t covered = 0;
        for (std::size_t i = 0; i < devices; ++i) {
          const SplitPart p = split_part(t, split, devices, i);
          const std::uint64_t count = shape[dim] / devices;
          EXPECT_EQ(p.part_begin, i * count);
          EXPECT_EQ(p.shape[dim], count);
          EXPECT_EQ(offsets_of(p, 2), expected_offsets(t, dim, i * count, count))
              << "shape rank " << shape.size() << ", " << devices << " devices, part " << i
              << (split == Split::rows ? ", rows" : ", columns");
          covered += p.bytes * p.rows;
        }
        EXPECT_EQ(covered, t.bytes) << "the parts cover the tensor once";
      }
    }
  }
}

TEST(SplitPart, ACutThatDoesNotDivideOrAScalarCutIsRefused) {
  EXPECT_EQ(testing::error_of([] {
              (void)split_part(tensor({1001, 4096}), Split::rows, 2, 0);
            }),
            Errc::invalid_argument);
  EXPECT_EQ(testing::error_of([] {
              (void)split_part(tensor({1000, 4097}), Split::columns, 2, 1);
            }),
            Errc::invalid_argument);
  EXPECT_EQ(testing::error_of([] { (void)split_part(tensor({}), Split::rows, 2, 0); }), Errc::invalid_argument);
  try {
    (void)split_part(tensor({7, 9}), Split::columns, 4, 0);
    FAIL() << "expected a refusal";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("\"w\" (shape [7, 9]) cannot be split by columns across 4 devices"),
              std::string::npos)
        << e.what();
  }
  // An empty tensor cut by columns reads nothing (not the next tensor's bytes).
  const SplitPart empty = split_part(tensor({0, 4}), Split::columns, 2, 1);
  EXPECT_EQ(empty.bytes * empty.rows, 0u);
  EXPECT_EQ(empty.shape, (std::vector<std::uint64_t>{0, 2}));
  // The other cut of the same tensor divides: not refused.
  EXPECT_EQ(split_part(tensor({1000, 4097}), Split::rows, 2, 1).part_begin, 500u);
}

}  // namespace
}  // namespace unimem::gpu::detail
