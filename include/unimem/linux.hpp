// unimem/linux.hpp — a Block as a Linux file descriptor.
//
// On Linux a shareable Block is a memfd. The portable headers name Blocks by
// BlockId and hand them over with Block::attach; the entry points here deal
// in descriptors, which only Linux has in this form: the memfd itself, a
// duplicate that a child keeps across exec, a Block taken back from a
// descriptor, and a Block sent over a Unix domain socket (SCM_RIGHTS: needs
// no ptrace permission, unlike attaching by id). <unimem/unimem.hpp>
// includes this header on Linux.
//
// BlockId on Linux: `process` is the pid of the process that handed the id
// out, `handle` its descriptor for the memfd, and `object` the memfd's inode
// (attach opens /proc/<process>/fd/<handle> and checks the inode, so a stale
// id is refused).
//
// Thread safety: as Block's const members; the socket calls may run on
// several threads with different sockets.
#pragma once

#include "unimem/block.hpp"

namespace unimem {

// The memfd behind a shareable Block; -1 for a Block opened with
// shareable = false (or an empty one). Owned by the Block: duplicate it
// (dup) to keep it past the Block's life. Never throws.
int block_descriptor(const Block& block) noexcept;

// A duplicate of block_descriptor(block) that survives exec (no
// close-on-exec), for a child process to adopt_block(); the caller owns it.
// Throws Error(system) when descriptors run out, Error(invalid_argument) for
// a non-shareable Block.
int inheritable_descriptor(const Block& block);

// Takes ownership of `fd`, a descriptor of a unimem Block (inherited across
// exec, received over a socket), and maps it with `options` (as
// Block::attach's). Closes `fd` on error. Throws Error(invalid_argument) for a
// negative fd, Error(not_a_block) when it is not a unimem Block, and what
// Block::attach throws for mapping, pinning and GPU visibility.
Block adopt_block(int fd, const BlockOptions& options = {});

// Sends `block` (its descriptor and a short header naming it) over the
// connected Unix socket `socket`. The receiver gets its own descriptor.
// Throws Error(invalid_argument) for a Block that is not shareable,
// Error(disconnected) when the peer is gone, Error(system) otherwise.
void send_block(int socket, const Block& block);

// Receives a Block sent with send_block and maps it with `options`.
// Throws Error(disconnected) when the peer closed the socket first,
// Error(not_a_block) when what arrived is not a unimem Block or does not match
// its header, and what adopt_block throws.
Block receive_block(int socket, const BlockOptions& options = {});

}  // namespace unimem
