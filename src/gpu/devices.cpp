// src/gpu/devices.cpp — unimem::gpu: the driver's view of the machine.
#include "unimem/gpu.hpp"

#include "gpu/driver.hpp"

namespace unimem::gpu {

bool available() noexcept {
  try {
    detail::driver();
    return true;
  } catch (...) {
    return false;
  }
}

std::string unavailable_reason() {
  try {
    detail::driver();
    return {};
  } catch (const Error& e) {
    return e.what();
  }
}

int driver_version() { return detail::driver().version; }

std::vector<Device> devices() {
  const detail::Driver& d = detail::driver();
  std::vector<Device> out;
  for (int ordinal = 0; ordinal < d.device_count; ++ordinal) {
    detail::CUdevice device = 0;
    detail::check(d.cuDeviceGet(&device, ordinal), "cuDeviceGet");
    Device info;
    info.ordinal = ordinal;
    char name[256] = {};
    detail::check(d.cuDeviceGetName(name, sizeof name, device), "cuDeviceGetName");
    info.name = name;
    int value = 0;
    detail::check(d.cuDeviceGetAttribute(&value, detail::kAttrHostPointerForRegistered, device),
                  "cuDeviceGetAttribute");
    info.host_pointer_is_device_pointer = value != 0;
    detail::check(d.cuDeviceGetAttribute(&value, detail::kAttrHostRegisterSupported, device), "cuDeviceGetAttribute");
    info.host_register_supported = value != 0;
    out.push_back(std::move(info));
  }
  return out;
}

}  // namespace unimem::gpu
