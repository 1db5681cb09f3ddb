// bt-shim: the C ABI between Rust and libtorch's C++ API.
//
// Rules every exported function follows (see docs/SHIM.md):
// - `extern "C"`, no C++ types in signatures: tensors are `at::Tensor*` exactly as tch's
//   `Tensor::as_ptr()` hands them out (torch-sys' `C_tensor` is `torch::Tensor*`), returned tensors
//   are fresh `new at::Tensor(...)` that the Rust side adopts with `Tensor::from_ptr` and frees
//   through tch's `at_free` (`delete`).
// - No C++ exception crosses the boundary: each body runs inside BT_TRY, which returns a
//   malloc'ed error string (freed by `bt_shim_free_string`) or nullptr on success.
#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include <c10/util/Exception.h>

namespace bt_shim {

inline char* dup_error(const char* msg) {
  size_t n = std::strlen(msg);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) std::memcpy(out, msg, n + 1);
  return out;
}

}  // namespace bt_shim

// c10::Error::what() carries a C++ backtrace; the message alone is what a Rust error wants.
#define BT_TRY(...)                                                   \
  try {                                                               \
    __VA_ARGS__;                                                      \
    return nullptr;                                                   \
  } catch (const c10::Error& e) {                                     \
    return bt_shim::dup_error(e.what_without_backtrace());            \
  } catch (const std::exception& e) {                                 \
    return bt_shim::dup_error(e.what());                              \
  } catch (...) {                                                     \
    return bt_shim::dup_error("unknown C++ exception in bt-shim");    \
  }

// Error string: nullptr on success, else a malloc'ed message owned by the caller.
typedef char* bt_err;
