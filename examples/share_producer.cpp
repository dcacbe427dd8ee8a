// examples/share_producer.cpp — loads "weights" once into shared memory and
// lets other processes use them without a copy.
//
//   unimem_share_producer                      print the id, wait for Enter
//   unimem_share_producer CONSUMER [ARGS...]   run CONSUMER ARGS... ID, wait for it
//
// The weights live in a SharedLayout's weights Tape. A small directory at the
// Tape's first offset tells consumers where the tensor is and its checksum.
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <unimem/unimem.hpp>

#include "share_directory.hpp"

int main(int argc, char** argv) try {
  unimem::BlockOptions options;
  options.pinning = unimem::Pinning::unpinned;  // runs under any memlock limit
  unimem::SharedLayout layout = unimem::SharedLayout::create(8 << 20, 1 << 20, 1 << 20, options);

  auto* dir = layout.weights().take<example::Directory>(1).data();
  std::span<float> tensor = layout.weights().take<float>(1 << 20);  // a 4 MiB "weight matrix"
  double checksum = 0;
  for (std::size_t i = 0; i < tensor.size(); ++i) {
    tensor[i] = std::sin(static_cast<float>(i) * 0.001f);
    checksum += tensor[i];
  }
  *dir = {example::kMagic, layout.weights().offset_of(tensor.data()), tensor.size(), checksum};

  const std::string id = layout.weights().block().id().to_string();
  std::printf("producer %d: %zu floats loaded once, checksum %.6f\n%s", ::getpid(), tensor.size(), checksum,
              layout.stat().c_str());
  if (argc < 2) {
    std::printf("run:  unimem_share_consumer %s\npress Enter to stop sharing\n", id.c_str());
    std::fflush(stdout);
    std::getchar();
    return 0;
  }
  std::fflush(stdout);
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::vector<char*> args(argv + 1, argv + argc);
    std::string arg = id;
    args.push_back(arg.data());
    args.push_back(nullptr);
    ::execvp(args[0], args.data());
    std::perror("exec");
    std::_Exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
} catch (const unimem::Error& e) {
  std::fprintf(stderr, "producer: %s\n", e.what());
  return 1;
}
