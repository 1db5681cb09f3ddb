// Counting the ATen operators a piece of code dispatches, through libtorch's RecordFunction
// callbacks (what torch.profiler builds on). Used to count, not guess, what one training step
// launches: on CUDA every leaf operator that computes is one kernel launch or more, so the
// number of such leaves in a CPU run is the step's kernel count up to the few operators whose
// CUDA implementation launches several kernels (docs/GPU.md says how it is used).
//
// A "kernel" is an ATen operator that is not a view, allocation or metadata operator (the list below)
// and inside which no such computing operator ran on the same thread: composite operators such
// as aten::linear dispatch to aten::addmm and launch nothing themselves, while aten::mm on CPU
// still counts although it calls aten::resolve_conj inside.
#include "shim.h"

#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <ATen/record_function.h>

namespace {

std::atomic<bool> g_counting{false};
std::atomic<uint64_t> g_ops{0};
std::mutex g_mu;  // guards g_leaves and registration
std::unordered_map<std::string, uint64_t> g_leaves;
bool g_registered = false;

// Per thread: for each operator still running, whether a computing operator ran inside it.
thread_local std::vector<bool> t_had_child;

// Operators that only make views, allocate or read metadata: no kernel on any device.
bool launches_no_kernel(const char* name) {
  static const std::unordered_set<std::string> none = {
      "aten::view", "aten::_unsafe_view", "aten::_reshape_alias", "aten::reshape", "aten::view_as",
      "aten::t", "aten::transpose", "aten::as_strided_", "aten::transpose_", "aten::t_", "aten::permute", "aten::expand", "aten::expand_as", "aten::as_strided",
      "aten::squeeze", "aten::unsqueeze", "aten::select", "aten::slice", "aten::narrow", "aten::split",
      "aten::split_with_sizes", "aten::chunk", "aten::unbind", "aten::detach", "aten::detach_", "aten::alias",
      "aten::lift_fresh", "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::resize_",
      "aten::set_", "aten::result_type", "aten::is_nonzero", "aten::contiguous", "aten::to",
      "aten::requires_grad_", "aten::_has_compatible_shallow_copy_type", "aten::flatten", "aten::numpy_T",
      "aten::conj", "aten::_conj", "aten::resolve_conj", "aten::resolve_neg", "aten::size", "aten::stride",
      "aten::dim", "aten::broadcast_tensors", "aten::matrix_H", "aten::mT", "aten::diagonal",
      "aten::_nested_tensor_from_mask_left_aligned", "aten::unflatten", "aten::movedim", "aten::swapaxes",
      "aten::_unsafe_split", "aten::align_to"};
  // Only ATen operators compute; other record scopes of the FUNCTION kind (the autograd
  // engine's "autograd::engine::evaluate_function: ...", the variable hooks' "detach") wrap them.
  return std::strncmp(name, "aten::", 6) != 0 || none.count(name) != 0;
}

std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction&) {
  if (!g_counting.load(std::memory_order_relaxed)) return nullptr;
  g_ops.fetch_add(1, std::memory_order_relaxed);
  t_had_child.push_back(false);
  return nullptr;
}

void on_end(const at::RecordFunction& fn, at::ObserverContext*) {
  // An operator that started before counting began has no entry; the stack tells.
  if (t_had_child.empty()) return;
  bool inner_compute = t_had_child.back();
  t_had_child.pop_back();
  bool kernel = !inner_compute && !launches_no_kernel(fn.name());
  // The enclosing operator is a composite if anything below it computed.
  if (!t_had_child.empty() && (kernel || inner_compute)) t_had_child.back() = true;
  if (!kernel || !g_counting.load(std::memory_order_relaxed)) return;
  std::lock_guard<std::mutex> lock(g_mu);
  g_leaves[fn.name()] += 1;
}

}  // namespace

extern "C" {

bt_err bt_shim_opcount_start() {
  BT_TRY({
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_registered) {
      // Registered once and never removed (removal must not race running operators); while
      // counting is off the callbacks return at once.
      at::addGlobalCallback(
          at::RecordFunctionCallback(on_start, on_end).scopes({at::RecordScope::FUNCTION}).needsInputs(false));
      g_registered = true;
    }
    g_leaves.clear();
    g_ops.store(0);
    t_had_child.clear();
    g_counting.store(true);
  })
}

// Stops counting. `names` receives a malloc'ed "name\tcount\n..." list of the kernel operators
// (free with bt_shim_free_string); `ops` the number of operators of every depth.
bt_err bt_shim_opcount_stop(uint64_t* ops, char** names) {
  BT_TRY({
    g_counting.store(false);
    *ops = g_ops.load();
    std::string out;
    {
      std::lock_guard<std::mutex> lock(g_mu);
      for (const auto& kv : g_leaves) {
        out += kv.first;
        out += '\t';
        out += std::to_string(kv.second);
        out += '\n';
      }
    }
    char* s = static_cast<char*>(std::malloc(out.size() + 1));
    TORCH_CHECK(s != nullptr, "bt-shim: out of memory");
    std::memcpy(s, out.c_str(), out.size() + 1);
    *names = s;
  })
}

}  // extern "C"
