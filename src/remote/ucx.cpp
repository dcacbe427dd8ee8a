// src/remote/ucx.cpp — UCX statuses as Errors; UCP context and worker holders.
//
// Contexts are made with UCX's own configuration (UCX_* environment
// variables: UCX_TLS picks the transports) and one change of ours: a
// keepalive interval short enough that a peer killed without closing its
// connections fails transfers in bounded time (UCX's default is 20 s).
#include "remote/ucx.hpp"

#include <cstdlib>

namespace unimem::remote::detail {

bool peer_is_gone(ucs_status_t status) noexcept {
  return status == UCS_ERR_CONNECTION_RESET || status == UCS_ERR_UNREACHABLE || status == UCS_ERR_NOT_CONNECTED ||
         status == UCS_ERR_ENDPOINT_TIMEOUT || status == UCS_ERR_CANCELED || status == UCS_ERR_TIMED_OUT ||
         status == UCS_ERR_IO_ERROR || UCS_IS_LINK_ERROR(status) || UCS_IS_ENDPOINT_ERROR(status);
}

Error error_of(const std::string& call, ucs_status_t status) {
  const std::string what = call + " failed: " + ucs_status_string(status);
  if (peer_is_gone(status)) {
    return Error(Errc::disconnected, 0,
                 "unimem: remote pool: the peer is gone (" + what + "); connect again with a fresh descriptor");
  }
  return Error(Errc::system, 0, "unimem: remote pool: " + what);
}

Context::Context(bool wakeup, std::chrono::milliseconds keepalive) {
  ucp_config_t* config = nullptr;
  check("ucp_config_read", ucp_config_read(nullptr, nullptr, &config));
  // ucp_config_read has just read the environment the same way.
  if (keepalive.count() > 0 && std::getenv("UCX_KEEPALIVE_INTERVAL") == nullptr) {  // NOLINT(concurrency-mt-unsafe)
    // An unknown key (another UCX) leaves UCX's default: not worth failing for.
    (void)ucp_config_modify(config, "KEEPALIVE_INTERVAL", (std::to_string(keepalive.count()) + "ms").c_str());
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_RMA | (wakeup ? UCP_FEATURE_WAKEUP : 0);
  params.name = "unimem";
  const ucs_status_t status = ucp_init(&params, config, &context_);
  ucp_config_release(config);
  check("ucp_init", status);
}

Context::~Context() {
  if (context_ != nullptr) ucp_cleanup(context_);
}

Worker::Worker(const Context& context) {
  ucp_worker_params_t params{};
  params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  params.thread_mode = UCS_THREAD_MODE_SERIALIZED;
  check("ucp_worker_create", ucp_worker_create(context.get(), &params, &worker_));
}

Worker::~Worker() {
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
}

}  // namespace unimem::remote::detail
