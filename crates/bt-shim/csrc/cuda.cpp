// CUDA-only parts of bt-shim: device properties, side streams, events, CUDA graphs.
//
// Compiled with BT_SHIM_CUDA only when the CUDA runtime headers exist (the pip wheel ships them
// in nvidia/cu13/include) and libtorch has libtorch_cuda/libc10_cuda. Without it every function
// below returns an error string, so the Rust side links and reports "not built with CUDA".
//
// Streams and events go through c10's device-generic types (c10::Stream, c10::Event,
// c10::StreamGuard) rather than the header-inline CUDA wrappers: those call the CUDA runtime
// directly, which would make our binary depend on libcudart.so itself instead of reaching it
// through libc10_cuda (whose RUNPATH knows where the wheel keeps it).
#include "shim.h"

#include <cstdint>

#include <ATen/core/Tensor.h>

#ifdef BT_SHIM_CUDA
#include <optional>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>
#include <c10/core/StreamGuard.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

// Declared here instead of including ATen/cuda/CUDAContextLight.h, which also pulls in the
// cuBLAS/cuSPARSE/cuSOLVER headers: the CUDA 12 wheels ship those in separate packages, and
// only cuda_runtime_api.h (for cudaDeviceProp) is needed. Same declaration, defined in
// libtorch_cuda.
namespace at::cuda {
TORCH_CUDA_CPP_API cudaDeviceProp* getDeviceProperties(c10::DeviceIndex device);
}  // namespace at::cuda

namespace {

c10::DeviceIndex checked_device(int device) {
  auto count = c10::cuda::device_count();
  TORCH_CHECK(device >= 0 && device < count, "CUDA device ", device, " requested but ", count,
              " CUDA device(s) are available");
  return static_cast<c10::DeviceIndex>(device);
}

// A stream crosses the ABI as (id, device index); the device type is always CUDA.
c10::Stream unpack(int64_t id, int device) {
  return c10::Stream::unpack3(id, checked_device(device), c10::DeviceType::CUDA);
}

struct Graph {
  at::cuda::CUDAGraph graph;
  // Capture must run on a side stream; the guard makes it current from capture_begin to
  // capture_end and then restores the caller's stream (what torch.cuda.graph's context does).
  std::optional<c10::StreamGuard> guard;
};

}  // namespace

#define BT_CUDA_TRY(...) BT_TRY(__VA_ARGS__)
#else
#define BT_CUDA_TRY(...) \
  return bt_shim::dup_error("bt-shim was built without CUDA support (no CUDA headers or libtorch_cuda at build time)");
#endif

extern "C" {

int bt_shim_cuda_device_count() {
#ifdef BT_SHIM_CUDA
  try {
    return static_cast<int>(c10::cuda::device_count());
  } catch (...) {
    return 0;
  }
#else
  return 0;
#endif
}

bt_err bt_shim_cuda_device_properties(int device, char* name, size_t name_len, int* major,
                                      int* minor, uint64_t* total_memory, int* multiprocessors) {
  BT_CUDA_TRY({
    const cudaDeviceProp* p = at::cuda::getDeviceProperties(checked_device(device));
    if (name_len > 0) {
      std::strncpy(name, p->name, name_len - 1);
      name[name_len - 1] = '\0';
    }
    *major = p->major;
    *minor = p->minor;
    *total_memory = static_cast<uint64_t>(p->totalGlobalMem);
    *multiprocessors = p->multiProcessorCount;
  })
}

bt_err bt_shim_cuda_synchronize(int device) {
  BT_CUDA_TRY({
    c10::DeviceGuard guard(c10::Device(c10::DeviceType::CUDA, checked_device(device)));
    c10::cuda::device_synchronize();
  })
}

// ---- streams ----

bt_err bt_shim_cuda_stream_from_pool(int device, int high_priority, int64_t* id) {
  BT_CUDA_TRY({
    c10::Stream s = c10::cuda::getStreamFromPool(high_priority != 0, checked_device(device));
    *id = s.id();
  })
}

bt_err bt_shim_cuda_current_stream(int device, int64_t* id) {
  BT_CUDA_TRY(*id = c10::Stream(c10::cuda::getCurrentCUDAStream(checked_device(device))).id())
}

bt_err bt_shim_cuda_default_stream(int device, int64_t* id) {
  BT_CUDA_TRY(*id = c10::Stream(c10::cuda::getDefaultCUDAStream(checked_device(device))).id())
}

// Make `id` the current stream of its device (thread-local); returns the previous one.
bt_err bt_shim_cuda_exchange_stream(int64_t id, int device, int64_t* prev) {
  BT_CUDA_TRY({
    c10::Stream s = unpack(id, device);
    c10::Stream old = c10::Stream(c10::cuda::getCurrentCUDAStream(s.device_index()));
    c10::cuda::setCurrentCUDAStream(c10::cuda::CUDAStream(c10::cuda::CUDAStream::UNCHECKED, s));
    *prev = old.id();
  })
}

bt_err bt_shim_cuda_stream_synchronize(int64_t id, int device) {
  BT_CUDA_TRY(unpack(id, device).synchronize())
}

bt_err bt_shim_cuda_stream_query(int64_t id, int device, int* done) {
  BT_CUDA_TRY(*done = unpack(id, device).query() ? 1 : 0)
}

bt_err bt_shim_cuda_current_stream_synchronize(int device) {
  BT_CUDA_TRY(
      c10::Stream(c10::cuda::getCurrentCUDAStream(checked_device(device))).synchronize())
}

// dst.copy_(src) enqueued on `id` instead of the current stream.
bt_err bt_shim_copy_on_stream(const at::Tensor* dst, const at::Tensor* src, int64_t id,
                              int device, int non_blocking) {
  BT_CUDA_TRY({
    c10::StreamGuard guard(unpack(id, device));
    const_cast<at::Tensor*>(dst)->copy_(*src, non_blocking != 0);
  })
}

// Tell the caching allocator that `t` is in use on `id` (see Tensor.record_stream).
bt_err bt_shim_record_stream(const at::Tensor* t, int64_t id, int device) {
  BT_CUDA_TRY(t->record_stream(unpack(id, device)))
}

// ---- events ----

bt_err bt_shim_cuda_event_new(int enable_timing, void** out) {
  BT_CUDA_TRY(*out = new c10::Event(c10::DeviceType::CUDA,
                                    enable_timing != 0 ? c10::EventFlag::BACKEND_DEFAULT
                                                       : c10::EventFlag::PYTORCH_DEFAULT))
}

void bt_shim_cuda_event_free(void* ev) {
#ifdef BT_SHIM_CUDA
  try {
    delete static_cast<c10::Event*>(ev);
  } catch (...) {
  }
#else
  (void)ev;
#endif
}

bt_err bt_shim_cuda_event_record(void* ev, int64_t id, int device) {
  BT_CUDA_TRY(static_cast<c10::Event*>(ev)->record(unpack(id, device)))
}

// The stream `id` waits (on the GPU, the host does not block) until the event has completed.
bt_err bt_shim_cuda_event_block(void* ev, int64_t id, int device) {
  BT_CUDA_TRY(static_cast<c10::Event*>(ev)->block(unpack(id, device)))
}

bt_err bt_shim_cuda_event_synchronize(void* ev) {
  BT_CUDA_TRY(static_cast<c10::Event*>(ev)->synchronize())
}

bt_err bt_shim_cuda_event_query(void* ev, int* done) {
  BT_CUDA_TRY(*done = static_cast<c10::Event*>(ev)->query() ? 1 : 0)
}

bt_err bt_shim_cuda_event_elapsed_ms(void* start, void* end, double* ms) {
  BT_CUDA_TRY(*ms = static_cast<c10::Event*>(start)->elapsedTime(*static_cast<c10::Event*>(end)))
}

// ---- CUDA graphs ----

bt_err bt_shim_cuda_graph_new(void** out) { BT_CUDA_TRY(*out = new Graph()) }

void bt_shim_cuda_graph_free(void* g) {
#ifdef BT_SHIM_CUDA
  try {
    delete static_cast<Graph*>(g);
  } catch (...) {
  }
#else
  (void)g;
#endif
}

bt_err bt_shim_cuda_graph_capture_begin(void* g, int64_t id, int device) {
  BT_CUDA_TRY({
    auto* graph = static_cast<Graph*>(g);
    TORCH_CHECK(!graph->guard.has_value(), "CUDA graph capture already in progress");
    graph->guard.emplace(unpack(id, device));
    try {
      graph->graph.capture_begin();
    } catch (...) {
      graph->guard.reset();
      throw;
    }
  })
}

bt_err bt_shim_cuda_graph_capture_end(void* g) {
  BT_CUDA_TRY({
    auto* graph = static_cast<Graph*>(g);
    TORCH_CHECK(graph->guard.has_value(), "capture_end without capture_begin");
    try {
      graph->graph.capture_end();
    } catch (...) {
      graph->guard.reset();
      throw;
    }
    graph->guard.reset();
  })
}

bt_err bt_shim_cuda_graph_replay(void* g) { BT_CUDA_TRY(static_cast<Graph*>(g)->graph.replay()) }

bt_err bt_shim_cuda_graph_reset(void* g) { BT_CUDA_TRY(static_cast<Graph*>(g)->graph.reset()) }

}  // extern "C"
