// src/platform/linux/socket.cpp — handing a Block over a Unix domain socket.
//
// One message carries a small header (magic, size, inode) and the memfd as
// SCM_RIGHTS ancillary data. The receiver checks that the descriptor is a
// unimem Block (adopt_region) and that it is the one the header names, so a
// confused or hostile peer cannot make us map something else.
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "format.hpp"
#include "unimem/linux.hpp"

namespace unimem {
namespace {

struct Header {
  char magic[8];
  std::uint64_t size;
  std::uint64_t object;
};
constexpr char kMagic[8] = {'u', 'n', 'i', 'm', 'e', 'm', 'B', '1'};

}  // namespace

void send_block(int socket, const Block& block) {
  if (!block.id()) throw Error(Errc::invalid_argument, 0, "unimem: send_block: the Block is not shareable");
  Header header{};
  std::memcpy(header.magic, kMagic, sizeof kMagic);
  header.size = block.size();
  header.object = block.id().object;
  iovec iov{&header, sizeof header};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  const int fd = block_descriptor(block);
  std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  ssize_t n;
  do {
    n = ::sendmsg(socket, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n == static_cast<ssize_t>(sizeof header)) return;
  const int err = n < 0 ? errno : EIO;
  throw Error(err == EPIPE || err == ECONNRESET ? Errc::disconnected : Errc::system, err,
              "unimem: send_block failed: " + detail::errno_text(err));
}

Block receive_block(int socket, const BlockOptions& options) {
  Header header{};
  iovec iov{&header, sizeof header};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = ::recvmsg(socket, &msg, MSG_CMSG_CLOEXEC | MSG_WAITALL);
  } while (n < 0 && errno == EINTR);
  const int recv_errno = n < 0 ? errno : 0;  // before close() below can change errno
  // Take ownership of every descriptor that arrived, whatever happens next.
  int fd = -1;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int received;
      std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof received);
      if (fd < 0) {
        fd = received;
      } else {
        ::close(received);
      }
    }
  }
  auto refuse = [&](Errc code, int err, const std::string& why) {
    if (fd >= 0) ::close(fd);
    throw Error(code, err, "unimem: receive_block: " + why);
  };
  if (n < 0)
    refuse(recv_errno == ECONNRESET ? Errc::disconnected : Errc::system, recv_errno, detail::errno_text(recv_errno));
  if (n == 0) refuse(Errc::disconnected, 0, "the peer closed the socket before sending a Block");
  if (static_cast<std::size_t>(n) != sizeof header || std::memcmp(header.magic, kMagic, sizeof kMagic) != 0) {
    refuse(Errc::not_a_block, 0, "the message is not a unimem Block header");
  }
  if (fd < 0) refuse(Errc::not_a_block, 0, "the message carried no descriptor");
  Block block = adopt_block(fd, options);  // checks it is a unimem Block; closes fd on error
  if (block.size() != header.size || block.id().object != header.object) {
    throw Error(Errc::not_a_block, 0,
                "unimem: receive_block: the descriptor does not match its header (size " +
                    std::to_string(block.size()) + " vs " + std::to_string(header.size) + ")");
  }
  return block;
}

}  // namespace unimem
