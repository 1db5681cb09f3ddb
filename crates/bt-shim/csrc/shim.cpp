// Device-independent parts of bt-shim: multi-tensor (_foreach) ops, memory formats, autograd
// plumbing (.grad / .data assignment), autocast state, backend switches, pinned memory.
// Everything here works on a CPU-only libtorch; see cuda.cpp for streams, events and graphs.
#include "shim.h"

#include <cstdint>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>

namespace {

// tch hands out `at::Tensor*`; a TensorList needs contiguous `at::Tensor` values. Copying a
// handle only bumps a refcount, and in-place ops act on the shared TensorImpl, so the caller's
// tensors are the ones modified.
std::vector<at::Tensor> to_list(const at::Tensor* const* ts, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*ts[i]);
  return out;
}

// Hand a list of results to Rust: `out` has room for exactly `results.size()` pointers.
void export_list(std::vector<at::Tensor>&& results, at::Tensor** out, size_t n) {
  TORCH_CHECK(results.size() == n, "bt-shim: expected ", n, " results, got ", results.size());
  for (size_t i = 0; i < n; ++i) out[i] = new at::Tensor(std::move(results[i]));
}

using TL = const at::Tensor* const*;

}  // namespace

extern "C" {

void bt_shim_free_string(char* s) { std::free(s); }

int bt_shim_built_with_cuda() {
#ifdef BT_SHIM_CUDA
  return 1;
#else
  return 0;
#endif
}

// ---- multi-tensor ops: one dispatch (and on CUDA a handful of fused launches) per list ----

bt_err bt_shim_foreach_mul_scalar_(TL xs, size_t n, double s) {
  BT_TRY(at::_foreach_mul_(to_list(xs, n), at::Scalar(s)))
}

bt_err bt_shim_foreach_add_scalar_(TL xs, size_t n, double s) {
  BT_TRY(at::_foreach_add_(to_list(xs, n), at::Scalar(s)))
}

bt_err bt_shim_foreach_mul_tensor_(TL xs, size_t n, const at::Tensor* s) {
  BT_TRY(at::_foreach_mul_(to_list(xs, n), *s))
}

bt_err bt_shim_foreach_add_(TL xs, TL ys, size_t n, double alpha) {
  BT_TRY(at::_foreach_add_(to_list(xs, n), to_list(ys, n), at::Scalar(alpha)))
}

bt_err bt_shim_foreach_mul_(TL xs, TL ys, size_t n) {
  BT_TRY(at::_foreach_mul_(to_list(xs, n), to_list(ys, n)))
}

bt_err bt_shim_foreach_div_(TL xs, TL ys, size_t n) {
  BT_TRY(at::_foreach_div_(to_list(xs, n), to_list(ys, n)))
}

bt_err bt_shim_foreach_addcmul_(TL xs, TL t1, TL t2, size_t n, double value) {
  BT_TRY(at::_foreach_addcmul_(to_list(xs, n), to_list(t1, n), to_list(t2, n), at::Scalar(value)))
}

bt_err bt_shim_foreach_addcdiv_(TL xs, TL t1, TL t2, size_t n, double value) {
  BT_TRY(at::_foreach_addcdiv_(to_list(xs, n), to_list(t1, n), to_list(t2, n), at::Scalar(value)))
}

bt_err bt_shim_foreach_lerp_(TL xs, TL ends, size_t n, double weight) {
  BT_TRY(at::_foreach_lerp_(to_list(xs, n), to_list(ends, n), at::Scalar(weight)))
}

bt_err bt_shim_foreach_copy_(TL xs, TL src, size_t n, int non_blocking) {
  BT_TRY(at::_foreach_copy_(to_list(xs, n), to_list(src, n), non_blocking != 0))
}

bt_err bt_shim_foreach_zero_(TL xs, size_t n) { BT_TRY(at::_foreach_zero_(to_list(xs, n))) }

bt_err bt_shim_foreach_sqrt_(TL xs, size_t n) { BT_TRY(at::_foreach_sqrt_(to_list(xs, n))) }

bt_err bt_shim_foreach_sqrt(TL xs, size_t n, at::Tensor** out) {
  BT_TRY(export_list(at::_foreach_sqrt(to_list(xs, n)), out, n))
}

bt_err bt_shim_foreach_norm(TL xs, size_t n, double ord, at::Tensor** out) {
  BT_TRY(export_list(at::_foreach_norm(to_list(xs, n), at::Scalar(ord)), out, n))
}

// ---- memory format ----

bt_err bt_shim_to_channels_last(const at::Tensor* t, at::Tensor** out) {
  BT_TRY(*out = new at::Tensor(t->contiguous(at::MemoryFormat::ChannelsLast)))
}

int bt_shim_is_channels_last(const at::Tensor* t) {
  // is_contiguous(memory_format) never throws for a defined tensor; guard the undefined one.
  if (!t->defined() || t->dim() != 4) return 0;
  return t->is_contiguous(at::MemoryFormat::ChannelsLast) ? 1 : 0;
}

// ---- autograd plumbing ----

bt_err bt_shim_set_grad(const at::Tensor* param, const at::Tensor* grad) {
  BT_TRY({
    // The same checks as Python's `param.grad = g` (THPVariable_set_grad): a mismatched grad
    // would otherwise only fail, far away, inside the next AccumulateGrad.
    TORCH_CHECK(param->defined(), "set_grad: parameter is undefined");
    if (grad == nullptr || !grad->defined()) {
      param->mutable_grad() = at::Tensor();
    } else {
      TORCH_CHECK(grad->scalar_type() == param->scalar_type(), "set_grad: grad dtype ",
                  grad->scalar_type(), " != parameter dtype ", param->scalar_type());
      TORCH_CHECK(grad->device() == param->device(), "set_grad: grad device ", grad->device(),
                  " != parameter device ", param->device());
      TORCH_CHECK(grad->sizes() == param->sizes(), "set_grad: grad shape ", grad->sizes(),
                  " != parameter shape ", param->sizes());
      param->mutable_grad() = *grad;
    }
  })
}

bt_err bt_shim_set_data(const at::Tensor* var, const at::Tensor* data) {
  BT_TRY(var->set_data(*data))
}

// ---- autocast (thread-local state, like torch.autocast) ----

bt_err bt_shim_autocast_set_dtype(int device_type, int dtype) {
  BT_TRY(at::autocast::set_autocast_dtype(static_cast<at::DeviceType>(device_type),
                                          static_cast<at::ScalarType>(dtype)))
}

bt_err bt_shim_autocast_get_dtype(int device_type, int* dtype) {
  BT_TRY(*dtype = static_cast<int>(
             at::autocast::get_autocast_dtype(static_cast<at::DeviceType>(device_type))))
}

bt_err bt_shim_autocast_set_enabled(int device_type, int enabled) {
  BT_TRY(at::autocast::set_autocast_enabled(static_cast<at::DeviceType>(device_type), enabled != 0))
}

bt_err bt_shim_autocast_is_enabled(int device_type, int* enabled) {
  BT_TRY(*enabled = at::autocast::is_autocast_enabled(static_cast<at::DeviceType>(device_type)) ? 1 : 0)
}

// torch.autocast.__enter__: remember the previous state, set dtype, enable, count nesting.
bt_err bt_shim_autocast_enter(int device_type, int dtype, int* prev_enabled, int* prev_dtype) {
  BT_TRY({
    auto dt = static_cast<at::DeviceType>(device_type);
    *prev_enabled = at::autocast::is_autocast_enabled(dt) ? 1 : 0;
    *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(dt));
    at::autocast::set_autocast_dtype(dt, static_cast<at::ScalarType>(dtype));
    at::autocast::set_autocast_enabled(dt, true);
    at::autocast::increment_nesting();
  })
}

// torch.autocast.__exit__: the cast-weight cache lives until the outermost region ends.
bt_err bt_shim_autocast_exit(int device_type, int prev_enabled, int prev_dtype) {
  BT_TRY({
    auto dt = static_cast<at::DeviceType>(device_type);
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(dt, prev_enabled != 0);
    at::autocast::set_autocast_dtype(dt, static_cast<at::ScalarType>(prev_dtype));
  })
}

// ---- global backend switches (process-wide, harmless without CUDA) ----

void bt_shim_set_cudnn_benchmark(int on) { at::globalContext().setBenchmarkCuDNN(on != 0); }

int bt_shim_cudnn_benchmark() { return at::globalContext().benchmarkCuDNN() ? 1 : 0; }

bt_err bt_shim_set_allow_tf32(int on) {
  BT_TRY({
    at::globalContext().setAllowTF32CuBLAS(on != 0);
    at::globalContext().setAllowTF32CuDNN(on != 0);
  })
}

bt_err bt_shim_set_allow_tf32_each(int matmul, int cudnn) {
  BT_TRY({
    at::globalContext().setAllowTF32CuBLAS(matmul != 0);
    at::globalContext().setAllowTF32CuDNN(cudnn != 0);
  })
}

bt_err bt_shim_allow_tf32(int* matmul, int* cudnn) {
  BT_TRY({
    *matmul = at::globalContext().allowTF32CuBLAS() ? 1 : 0;
    *cudnn = at::globalContext().allowTF32CuDNN() ? 1 : 0;
  })
}

// ---- pinned host memory (needs a CUDA driver; throws a c10::Error otherwise) ----

bt_err bt_shim_pin_memory(const at::Tensor* t, at::Tensor** out) {
  BT_TRY(*out = new at::Tensor(t->pin_memory()))
}

bt_err bt_shim_is_pinned(const at::Tensor* t, int* pinned) {
  BT_TRY(*pinned = t->is_pinned() ? 1 : 0)
}

}  // extern "C"
