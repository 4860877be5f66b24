// c10d, the engine under torch.distributed, for multi-process training: a TCPStore for the
// rendezvous and a ProcessGroupGloo (CPU tensors) or, in a CUDA build with NCCL's headers
// (SWEEP_NCCL, set by build.rs), a ProcessGroupNCCL (CUDA tensors) for the collectives. Part of
// sweep's one C++ shim (shim.h); compiled only where Gloo's headers are (Debian's libgloo-dev,
// which the torch wheel lacks), linked against libtorch_cpu, which holds c10d and Gloo, and
// libtorch_cuda, which holds ProcessGroupNCCL.

#include "shim.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef SWEEP_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

struct SweepPG {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> pg;
  std::chrono::milliseconds timeout;
};

namespace {

// Run by the autograd engine right after it adds a backward pass's gradient into a parameter's
// (its AccumulateGrad): that gradient is summed into the owner rank's, and every other rank frees
// its own, so that no rank holds more than its shard and the gradients in flight (ZeRO stage 2
// during the backward pass; tch binds no autograd hooks). Every rank runs the same graph, so the
// engine reaches the parameters, and issues these reduces, in the same order on each. Gloo takes
// a CUDA gradient through a copy in host memory.
struct ReduceToOwner : torch::autograd::PostAccumulateGradHook {
  c10::intrusive_ptr<c10d::Backend> pg;
  std::chrono::milliseconds timeout;
  int owner;
  int rank;
  std::shared_ptr<std::atomic<int64_t>> nanos;

  void operator()(const torch::autograd::Variable& param) override {
    auto started = std::chrono::steady_clock::now();
    at::Tensor& g = param.mutable_grad();
    if (!g.defined()) return;
    bool host = g.is_cuda() && pg->getBackendName() != "nccl";
    at::Tensor buf = host ? g.to(at::kCPU) : g;
    std::vector<at::Tensor> v{buf};
    c10d::ReduceOptions o;
    o.rootRank = owner;
    auto work = pg->reduce(v, o);
    // NCCL's wait() orders the current stream after the reduce without blocking the host (its
    // watchdog enforces the timeout); a wait with a timeout would block it per parameter.
    if (pg->getBackendName() == "nccl") {
      work->wait();
    } else {
      work->wait(timeout);
    }
    if (rank != owner) {
      g.reset();
    } else if (host) {
      g.copy_(buf);
    }
    *nanos += std::chrono::duration_cast<std::chrono::nanoseconds>(
                  std::chrono::steady_clock::now() - started)
                  .count();
  }
};

}  // namespace

// The parameters whose gradients are reduced during the backward pass, and the time spent.
struct SweepReducer {
  std::vector<at::Tensor> params;
  std::shared_ptr<std::atomic<int64_t>> nanos;
};

extern "C" {

// Meet the other ranks at host:port (rank 0 serves the store) and make a process group.
// backend: "gloo" or "nccl". device_host: the address Gloo binds to ("" for this machine's
// hostname). gpu: this rank's CUDA device for NCCL (-1 for none).
SweepPG* sweep_pg_new(const char* backend, const char* host, int port, int rank, int world,
                      const char* device_host, int gpu, int timeout_ms, char* err,
                      size_t errlen) {
  SweepPG* out = nullptr;
  guarded(err, errlen, [&] {
    std::string name(backend);
#ifdef SWEEP_NCCL
    bool nccl = name == "nccl";
#else
    bool nccl = false;
#endif
    if (name != "gloo" && !nccl) {
      throw std::runtime_error("backend `" + name + "` is not built into this binary");
    }
    if (nccl && gpu < 0) throw std::runtime_error("the nccl backend needs a CUDA device");
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(port);
    so.isServer = rank == 0;
    so.numWorkers = static_cast<std::size_t>(world);
    so.waitWorkers = true;
    so.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), so);
#ifdef SWEEP_NCCL
    if (nccl) {
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(gpu));
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
      // Bound to this rank's GPU, and the communicator made now (as torch.distributed does for
      // init_process_group(device_id=...)): a rank that cannot join fails here, not mid-step.
      at::Device dev(at::kCUDA, static_cast<c10::DeviceIndex>(gpu));
      pg->setBoundDeviceId(dev);
      pg->eagerConnectSingleDevice(dev);
      out = new SweepPG{store, pg, timeout};
      return;
    }
#endif
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    std::string dh(device_host);
    opts->devices.push_back(dh.empty() ? c10d::ProcessGroupGloo::createDefaultDevice()
                                       : c10d::ProcessGroupGloo::createDeviceForHostname(dh));
    opts->threads = 1;
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    out = new SweepPG{store, pg, timeout};
  });
  return out;
}

void sweep_pg_free(SweepPG* p) { delete p; }

// From now on, reduce each of the n parameters' gradients into rank owners[i]'s as the backward
// pass completes it (ReduceToOwner); until sweep_reducer_free.
SweepReducer* sweep_reduce_in_backward(SweepPG* p, at::Tensor** params, const int* owners,
                                       int n, int rank, char* err, size_t errlen) {
  SweepReducer* out = nullptr;
  guarded(err, errlen, [&] {
    auto r = std::make_unique<SweepReducer>();
    r->nanos = std::make_shared<std::atomic<int64_t>>(0);
    // Every parameter checked before any hook is set: a refusal leaves none behind.
    for (int i = 0; i < n; i++) {
      const at::Tensor& t = *params[i];
      if (!t.requires_grad() || !t.is_leaf()) {
        throw std::runtime_error("reducing in the backward pass: parameter " +
                                 std::to_string(i) + " is not a trainable leaf");
      }
    }
    for (int i = 0; i < n; i++) {
      const at::Tensor& t = *params[i];
      auto hook = std::make_unique<ReduceToOwner>();
      hook->pg = p->pg;
      hook->timeout = p->timeout;
      hook->owner = owners[i];
      hook->rank = rank;
      hook->nanos = r->nanos;
      torch::autograd::impl::set_post_acc_grad_hooks(t, std::move(hook));
      r->params.push_back(t);
    }
    out = r.release();
  });
  return out;
}

// Nanoseconds the reducer's hooks have spent so far.
int64_t sweep_reducer_nanos(SweepReducer* r) { return r->nanos->load(); }

// Remove the hooks, and the reducer.
void sweep_reducer_free(SweepReducer* r) {
  for (auto& t : r->params) torch::autograd::impl::set_post_acc_grad_hooks(t, nullptr);
  delete r;
}

// In place: t = the sum of t over the ranks.
int sweep_pg_allreduce_sum(SweepPG* p, at::Tensor* t, char* err, size_t n) {
  return guarded(err, n, [&] {
    std::vector<at::Tensor> v{*t};
    p->pg->allreduce(v, c10d::AllreduceOptions{})->wait(p->timeout);
  });
}

// In place: t = root's t.
int sweep_pg_broadcast(SweepPG* p, at::Tensor* t, int root, char* err, size_t n) {
  return guarded(err, n, [&] {
    std::vector<at::Tensor> v{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    p->pg->broadcast(v, o)->wait(p->timeout);
  });
}

// In place on `root`: t = the sum of t over the ranks (elsewhere t may be scratch space).
int sweep_pg_reduce_sum(SweepPG* p, at::Tensor* t, int root, char* err, size_t n) {
  return guarded(err, n, [&] {
    std::vector<at::Tensor> v{*t};
    c10d::ReduceOptions o;
    o.rootRank = root;
    p->pg->reduce(v, o)->wait(p->timeout);
  });
}

// Through the store, CPU-side (no collective pending, so no backend watchdog fires while one rank
// works alone): rank 0 marks `key` done; the others wait for the mark up to timeout_ms.
int sweep_pg_store_set(SweepPG* p, const char* key, char* err, size_t n) {
  return guarded(err, n, [&] { p->store->set(std::string("sweep/") + key, std::string("1")); });
}

int sweep_pg_store_wait(SweepPG* p, const char* key, int timeout_ms, char* err, size_t n) {
  return guarded(err, n, [&] {
    p->store->wait({std::string("sweep/") + key}, std::chrono::milliseconds(timeout_ms));
  });
}

int sweep_pg_barrier(SweepPG* p, char* err, size_t n) {
  return guarded(err, n, [&] { p->pg->barrier(c10d::BarrierOptions{})->wait(p->timeout); });
}

}  // extern "C"
