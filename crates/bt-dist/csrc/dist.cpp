// bt-dist: the C ABI between Rust and libtorch's c10d (TCPStore, ProcessGroupGloo/NCCL).
//
// Rules (the same as bt-shim's, see crates/bt-shim/csrc/shim.h):
// - `extern "C"`, no C++ types in signatures. Tensors are `at::Tensor*` exactly as tch's
//   `Tensor::as_ptr()` hands them out; returned tensors are fresh `new at::Tensor(...)` that Rust
//   adopts with `Tensor::from_ptr` (freed by tch through `delete`).
// - No C++ exception crosses the boundary: every body runs inside BT_TRY, which returns a malloc'ed
//   error string (freed by `bt_dist_free_string`) or nullptr on success.
// - A group is a `Group*` that owns one reference of an intrusive_ptr; autograd nodes created by
//   the differentiable collectives hold further references, so a graph that outlives the Rust
//   handle still finds its group in backward.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

char* dup_error(const char* msg) {
  size_t n = std::strlen(msg);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) std::memcpy(out, msg, n + 1);
  return out;
}

using ms = std::chrono::milliseconds;

// One process group: the rendezvous store, the c10d backend and a heartbeat thread.
//
// The heartbeat exists for one purpose: after a collective fails, tell which peer is gone. Gloo's
// errors name a socket address ("Connection closed by peer [127.0.0.1]:41234"), not a rank, and a
// rank that is alive but stuck in the same failed collective looks the same from the outside. Each
// rank increments `bt_dist/hb/<rank>` in the store every `hb_interval` from its own thread (and its
// own store connection, so a blocked collective does not stop it); a rank whose counter stands
// still over a few intervals is dead (or its host is).
struct Group : torch::CustomClassHolder {
  c10::intrusive_ptr<c10d::Store> store;  // this run's namespace in the rendezvous store
  c10::intrusive_ptr<c10d::Backend> backend;
  int rank = 0;
  int world = 1;
  bool nccl = false;
  at::Device device = at::Device(at::kCPU);
  ms timeout{0};
  ms hb_interval{0};

  std::thread hb_thread;
  std::mutex hb_mutex;
  std::condition_variable hb_cv;
  bool hb_stop = false;

  ~Group() override {
    {
      std::lock_guard<std::mutex> lock(hb_mutex);
      hb_stop = true;
    }
    hb_cv.notify_all();
    if (hb_thread.joinable()) hb_thread.join();
    backend.reset();
    store.reset();
  }

  static std::string hb_key(int r) { return "bt_dist/hb/" + std::to_string(r); }

  void start_heartbeat() {
    // A second connection: TCPStore serializes the operations of one client, and the main one may
    // sit in a blocking get() inside Gloo's rendezvous.
    c10::intrusive_ptr<c10d::Store> hb_store = store->clone();
    hb_store->setTimeout(timeout);
    hb_thread = std::thread([this, hb_store]() {
      std::unique_lock<std::mutex> lock(hb_mutex);
      while (!hb_stop) {
        lock.unlock();
        try {
          hb_store->add(hb_key(rank), 1);
        } catch (...) {
          // The store is gone (its host died): nothing left to beat for; the next collective or
          // the post-mortem reports it.
          return;
        }
        lock.lock();
        hb_cv.wait_for(lock, hb_interval, [this] { return hb_stop; });
      }
    });
  }

  void wait(const c10::intrusive_ptr<c10d::Work>& work, const char* op) {
    // NCCL: a plain wait() only orders the current CUDA stream after the collective (no host
    // sync); its timeout is enforced by ProcessGroupNCCL's watchdog (options->timeout), which
    // tears the process down. A timed wait would block the host on every collective.
    // Gloo: the timed wait is the timeout.
    bool ok = nccl ? work->wait() : work->wait(timeout);
    if (!ok) {
      throw std::runtime_error(std::string(op) + " was aborted");
    }
  }

  // NCCL needs device tensors; a CPU tensor (e.g. the loss's row count) takes a round trip.
  at::Tensor on_device(const at::Tensor& t) const {
    if (nccl && t.device() != device) return t.to(device);
    return t;
  }

  // Sums `t` across ranks, in place. `t` must be contiguous.
  void allreduce_(at::Tensor& t) {
    at::Tensor d = on_device(t);
    std::vector<at::Tensor> v{d};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    opts.timeout = timeout;
    wait(backend->allreduce(v, opts), "all_reduce");
    if (!d.is_same(t)) t.copy_(d);
  }

  // Rank-ordered concatenation of every rank's rows; row counts may differ between ranks (a
  // first tiny all-gather of the counts, then the rows padded to the largest count).
  at::Tensor allgather_rows(const at::Tensor& x, std::vector<int64_t>* counts_out) {
    TORCH_CHECK(x.dim() >= 1, "all_gather: expected at least 1 dimension, got a scalar");
    c10d::AllgatherOptions opts;
    opts.timeout = timeout;
    auto gather = [&](const at::Tensor& in) {
      at::Tensor d = on_device(in.contiguous());
      std::vector<at::Tensor> inputs{d};
      std::vector<std::vector<at::Tensor>> outputs(1);
      for (int r = 0; r < world; ++r) outputs[0].push_back(at::empty_like(d));
      wait(backend->allgather(outputs, inputs, opts), "all_gather");
      return outputs[0];
    };
    at::Tensor count = at::full({1}, x.size(0), at::TensorOptions().dtype(at::kLong));
    std::vector<at::Tensor> counts_t = gather(count);
    std::vector<int64_t> counts;
    for (auto& c : counts_t) counts.push_back(c.cpu().item<int64_t>());
    int64_t max_rows = *std::max_element(counts.begin(), counts.end());
    at::Tensor padded = x.contiguous();
    if (x.size(0) != max_rows) {
      std::vector<int64_t> shape = x.sizes().vec();
      shape[0] = max_rows;
      padded = at::zeros(shape, x.options());
      padded.narrow(0, 0, x.size(0)).copy_(x);
    }
    std::vector<at::Tensor> parts = gather(padded);
    std::vector<at::Tensor> rows;
    for (int r = 0; r < world; ++r) rows.push_back(parts[r].narrow(0, 0, counts[r]));
    if (counts_out != nullptr) *counts_out = counts;
    return at::cat(rows, 0).to(x.device());
  }

  void barrier() {
    if (nccl) {
      // ProcessGroupNCCL's barrier guesses a device from the rank; a one-element all-reduce on
      // the group's own device is the same synchronization without the guess.
      at::Tensor t = at::zeros({1}, at::TensorOptions().device(device));
      allreduce_(t);
      return;
    }
    c10d::BarrierOptions opts;
    opts.timeout = timeout;
    wait(backend->barrier(opts), "barrier");
  }
};

c10::intrusive_ptr<Group> group_ref(void* g) {
  TORCH_CHECK(g != nullptr, "bt-dist: null process group");
  return c10::intrusive_ptr<Group>::unsafe_reclaim_from_nonowning(static_cast<Group*>(g));
}

c10::IValue capsule(const c10::intrusive_ptr<Group>& g) {
  return c10::IValue::make_capsule(g);
}

c10::intrusive_ptr<Group> from_capsule(const c10::IValue& v) {
  return c10::static_intrusive_pointer_cast<Group>(v.toCapsule());
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Forward: Σ_r x_r. Backward: Σ_r g_r, the all-reduce of the incoming gradient
// (torch.distributed.nn.functional.all_reduce). Why not the identity: see lib.rs and
// docs/DISTRIBUTED.md; in short, every rank's copy of the loss depends on every rank's x.
struct AllReduceSum : public torch::autograd::Function<AllReduceSum> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, Group* g) {
    auto group = group_ref(g);
    ctx->saved_data["g"] = capsule(group);
    ctx->saved_data["shape"] = x.sizes().vec();
    ctx->saved_data["proto"] = at::empty({0}, x.options());
    at::Tensor y = x.detach().clone(at::MemoryFormat::Contiguous);
    group->allreduce_(y);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto group = from_capsule(ctx->saved_data["g"]);
    at::Tensor gy;
    if (grads[0].defined()) {
      gy = grads[0].clone(at::MemoryFormat::Contiguous);
    } else {
      // Every rank must still enter the collective, or the others wait for it until the timeout.
      gy = at::zeros(ctx->saved_data["shape"].toIntVector(),
                     ctx->saved_data["proto"].toTensor().options());
    }
    group->allreduce_(gy);
    return {gy, at::Tensor()};
  }
};

// Forward: the rank-ordered row concatenation. Backward: each rank gets the sum over ranks of
// the gradient of its own rows (a reduce-scatter, done as all-reduce + slice: Gloo's
// reduce_scatter wants equal chunks and the rows may differ).
struct AllGatherRows : public torch::autograd::Function<AllGatherRows> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, Group* g) {
    auto group = group_ref(g);
    std::vector<int64_t> counts;
    at::Tensor y = group->allgather_rows(x.detach(), &counts);
    int64_t offset = 0;
    for (int r = 0; r < group->rank; ++r) offset += counts[r];
    ctx->saved_data["g"] = capsule(group);
    ctx->saved_data["offset"] = offset;
    ctx->saved_data["rows"] = counts[group->rank];
    ctx->saved_data["shape"] = y.sizes().vec();
    ctx->saved_data["proto"] = at::empty({0}, x.options());
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto group = from_capsule(ctx->saved_data["g"]);
    at::Tensor gy = grads[0].defined()
        ? grads[0].clone(at::MemoryFormat::Contiguous)
        : at::zeros(ctx->saved_data["shape"].toIntVector(),
                    ctx->saved_data["proto"].toTensor().options());
    group->allreduce_(gy);
    int64_t offset = ctx->saved_data["offset"].toInt();
    int64_t rows = ctx->saved_data["rows"].toInt();
    return {gy.narrow(0, offset, rows).contiguous(), at::Tensor()};
  }
};

bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

std::shared_ptr<::gloo::transport::Device> gloo_device(const std::string& master_addr) {
  // torch's own choice (ProcessGroupGloo.create_default_device / GLOO_SOCKET_IFNAME).
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME")) {
    std::string first(ifname);
    first = first.substr(0, first.find(','));
    if (!first.empty()) return c10d::ProcessGroupGloo::createDeviceForInterface(first);
  }
  // A single-node run on the loopback rendezvous address: bind there too, whatever the
  // hostname resolves to (containers often resolve it to an address other ranks cannot reach).
  if (is_loopback(master_addr)) return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

std::vector<at::Tensor> tensor_list(const at::Tensor* const* ts, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(ts[i] != nullptr && ts[i]->defined(), "bt-dist: tensor ", i, " is undefined");
    out.push_back(*ts[i]);
  }
  return out;
}

// One flat buffer per bucket [begin, end): the tensors of a bucket share dtype and device (the
// Rust planner guarantees it).
at::Tensor flatten_bucket(const std::vector<at::Tensor>& ts, size_t begin, size_t end) {
  if (end - begin == 1 && ts[begin].is_contiguous()) return ts[begin];
  std::vector<at::Tensor> flat;
  for (size_t i = begin; i < end; ++i) flat.push_back(ts[i].reshape({-1}));
  return at::cat(flat, 0);
}

void unflatten_bucket(std::vector<at::Tensor>& ts, size_t begin, size_t end, const at::Tensor& flat) {
  if (end - begin == 1 && flat.is_same(ts[begin])) return;
  int64_t offset = 0;
  for (size_t i = begin; i < end; ++i) {
    int64_t n = ts[i].numel();
    ts[i].copy_(flat.narrow(0, offset, n).view(ts[i].sizes()));
    offset += n;
  }
}

// Bucketed collective: every bucket [ends[b-1], ends[b]) of `tensors` is flattened and its
// collective launched (`launch(flat)` returns the Work) before the first wait, so the buckets
// overlap; then each is waited for in order, `finish(flat)` runs, and it is copied back.
template <typename Launch, typename Finish>
void bucketed(const c10::intrusive_ptr<Group>& g, std::vector<at::Tensor>& tensors, const size_t* ends,
              size_t nb, const char* op, Launch launch, Finish finish) {
  std::vector<at::Tensor> flats;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  size_t begin = 0;
  for (size_t b = 0; b < nb; ++b) {
    at::Tensor flat = g->on_device(flatten_bucket(tensors, begin, ends[b]));
    works.push_back(launch(flat));
    flats.push_back(flat);
    begin = ends[b];
  }
  begin = 0;
  for (size_t b = 0; b < nb; ++b) {
    g->wait(works[b], op);
    finish(flats[b]);
    unflatten_bucket(tensors, begin, ends[b], flats[b]);
    begin = ends[b];
  }
}

}  // namespace

#define BT_TRY(...)                                                   \
  try {                                                               \
    at::NoGradGuard no_grad_;                                         \
    (void)no_grad_;                                                   \
    __VA_ARGS__;                                                      \
    return nullptr;                                                   \
  } catch (const c10::Error& e) {                                     \
    return dup_error(e.what_without_backtrace());                     \
  } catch (const std::exception& e) {                                 \
    return dup_error(e.what());                                       \
  } catch (...) {                                                     \
    return dup_error("unknown C++ exception in bt-dist");             \
  }

// Same, but autograd stays on (the differentiable collectives record nodes).
#define BT_TRY_GRAD(...)                                              \
  try {                                                               \
    __VA_ARGS__;                                                      \
    return nullptr;                                                   \
  } catch (const c10::Error& e) {                                     \
    return dup_error(e.what_without_backtrace());                     \
  } catch (const std::exception& e) {                                 \
    return dup_error(e.what());                                       \
  } catch (...) {                                                     \
    return dup_error("unknown C++ exception in bt-dist");             \
  }

extern "C" {

typedef char* bt_err;

void bt_dist_free_string(char* s) { std::free(s); }

int bt_dist_built_with_nccl() {
#ifdef USE_C10D_NCCL
  return 1;
#else
  return 0;
#endif
}

// backend: 0 = Gloo, 1 = NCCL. host_store: this process runs the TCPStore server.
// agent_store: the store is torchelastic's agent store (keys under /worker/attempt_<restart>).
bt_err bt_dist_new(const char* addr, int port, int rank, int world, int host_store,
                   int agent_store, int restart_count, int backend, int device_index,
                   int64_t timeout_ms, void** out) {
  BT_TRY({
    TORCH_CHECK(world >= 1 && rank >= 0 && rank < world, "bad rank ", rank, " for world size ",
                world);
    TORCH_CHECK(port > 0 && port < 65536, "bad port ", port);
    auto g = c10::make_intrusive<Group>();
    g->rank = rank;
    g->world = world;
    g->timeout = ms(timeout_ms);
    g->hb_interval = ms(std::clamp<int64_t>(timeout_ms / 20, 50, 1000));

    c10d::TCPStoreOptions o;
    o.port = static_cast<uint16_t>(port);
    o.isServer = host_store != 0;
    o.numWorkers = static_cast<size_t>(world);
    o.waitWorkers = true;
    o.timeout = g->timeout;
    o.multiTenant = true;
    c10::intrusive_ptr<c10d::Store> root = c10::make_intrusive<c10d::TCPStore>(addr, o);
    if (agent_store != 0) {
      root = c10::make_intrusive<c10d::PrefixStore>(
          "/worker/attempt_" + std::to_string(restart_count), root);
    }
    g->store = root;
    auto pg_store = c10::make_intrusive<c10d::PrefixStore>("bt_dist/pg", root);

    if (backend == 1) {
#ifdef USE_C10D_NCCL
      g->nccl = true;
      g->device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device_index));
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(device_index));
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = g->timeout;
      g->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(pg_store, rank, world, opts);
#else
      TORCH_CHECK(false,
                  "bt-dist was built without NCCL (nccl.h or the CUDA headers were not found "
                  "at build time); use the gloo backend");
#endif
    } else {
      auto opts = c10d::ProcessGroupGloo::Options::create(g->timeout);
      opts->devices.push_back(gloo_device(addr));
      g->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(pg_store, rank, world, opts);
    }
    g->start_heartbeat();
    *out = g.release();
  })
}

void bt_dist_free(void* g) {
  if (g != nullptr) c10::intrusive_ptr<Group>::reclaim(static_cast<Group*>(g));
}

// In-place sum of `n` tensors in buckets: bucket b is [ends[b-1], ends[b]). All buckets are
// launched before the first wait, so Gloo's worker threads overlap them. `scale` multiplies the
// result (1/world for a mean; 1 skips it).
bt_err bt_dist_allreduce_coalesced(void* gp, const at::Tensor* const* ts, size_t n,
                                   const size_t* ends, size_t nb, double scale) {
  BT_TRY({
    auto g = group_ref(gp);
    auto tensors = tensor_list(ts, n);
    c10d::AllreduceOptions opts;
    opts.timeout = g->timeout;
    bucketed(
        g, tensors, ends, nb, "all_reduce",
        [&](at::Tensor& flat) {
          std::vector<at::Tensor> v{flat};
          return g->backend->allreduce(v, opts);
        },
        [&](at::Tensor& flat) {
          if (scale != 1.0) flat.mul_(scale);
        });
  })
}

bt_err bt_dist_broadcast_coalesced(void* gp, const at::Tensor* const* ts, size_t n,
                                   const size_t* ends, size_t nb, int root) {
  BT_TRY({
    auto g = group_ref(gp);
    auto tensors = tensor_list(ts, n);
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.timeout = g->timeout;
    bucketed(
        g, tensors, ends, nb, "broadcast",
        [&](at::Tensor& flat) {
          std::vector<at::Tensor> v{flat};
          return g->backend->broadcast(v, opts);
        },
        [](at::Tensor&) {});
  })
}

bt_err bt_dist_allreduce(void* gp, const at::Tensor* x, at::Tensor** out) {
  BT_TRY({
    auto g = group_ref(gp);
    at::Tensor y = x->detach().clone(at::MemoryFormat::Contiguous);
    g->allreduce_(y);
    *out = new at::Tensor(std::move(y));
  })
}

bt_err bt_dist_allgather(void* gp, const at::Tensor* x, at::Tensor** out) {
  BT_TRY({
    auto g = group_ref(gp);
    *out = new at::Tensor(g->allgather_rows(x->detach(), nullptr));
  })
}

bt_err bt_dist_barrier(void* gp) {
  BT_TRY({ group_ref(gp)->barrier(); })
}

bt_err bt_dist_allreduce_autograd(void* gp, const at::Tensor* x, at::Tensor** out) {
  BT_TRY_GRAD({
    TORCH_CHECK(gp != nullptr, "bt-dist: null process group");
    *out = new at::Tensor(AllReduceSum::apply(*x, static_cast<Group*>(gp)));
  })
}

bt_err bt_dist_allgather_autograd(void* gp, const at::Tensor* x, at::Tensor** out) {
  BT_TRY_GRAD({
    TORCH_CHECK(gp != nullptr, "bt-dist: null process group");
    *out = new at::Tensor(AllGatherRows::apply(*x, static_cast<Group*>(gp)));
  })
}

// Post-mortem: reads every rank's heartbeat counter, waits `wait_ms`, reads again, and sets
// stalled[r] = 1 for each other rank whose counter did not move. Fails when the store itself is
// unreachable (its host is gone).
bt_err bt_dist_stalled_ranks(void* gp, int64_t wait_ms, int* stalled) {
  BT_TRY({
    auto g = group_ref(gp);
    // The existing connection, not a clone: when the store's host is dead, a new client would
    // retry connecting for the whole timeout, while this one fails at once (socket closed).
    c10d::Store& store = *g->store;
    store.setTimeout(std::min(g->timeout, ms(std::max<int64_t>(wait_ms, 1000))));
    struct Restore {
      Group& g;
      ~Restore() { g.store->setTimeout(g.timeout); }
    } restore{*g};
    std::vector<int64_t> before(g->world);
    for (int r = 0; r < g->world; ++r) before[r] = store.add(Group::hb_key(r), 0);
    std::this_thread::sleep_for(ms(wait_ms));
    for (int r = 0; r < g->world; ++r) {
      int64_t now = store.add(Group::hb_key(r), 0);
      stalled[r] = (r != g->rank && now == before[r]) ? 1 : 0;
    }
  })
}

int64_t bt_dist_heartbeat_interval_ms(void* gp) {
  return gp == nullptr ? 0 : static_cast<Group*>(gp)->hb_interval.count();
}

}  // extern "C"
