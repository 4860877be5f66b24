// libtorch's fused and multi-tensor optimizer kernels, which tch does not bind (it binds no
// function that takes a list of tensors): at::_fused_adamw_ (one pass over each parameter, on
// the CPU and on CUDA) and the _foreach_ family (one launch per op for a whole list of tensors)
// for LionW, gradient norms and scaling; dropping a gradient (tch can only zero one); and, in CUDA builds (SWEEP_CUDA_STATS), the CUDA
// caching allocator's peak, which tch does not expose. Part of sweep's one C++ shim (shim.h).

#include "shim.h"

#include <ATen/ATen.h>
#ifdef SWEEP_CUDA_STATS
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <vector>

static std::vector<at::Tensor> list(at::Tensor** ts, size_t n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (size_t i = 0; i < n; i++) v.push_back(*ts[i]);
  return v;
}

extern "C" {

// AdamW in place over n parameters, their gradients and moments. steps[i] holds the step count
// (1 for the first update), read by the kernel. Decoupled decay by lr * weight_decay.
int sweep_fused_adamw(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs,
                      at::Tensor** exp_avg_sqs, at::Tensor** steps, size_t n, double lr,
                      double beta1, double beta2, double weight_decay, double eps, char* err,
                      size_t errlen) {
  return guarded(err, errlen, [&] {
    at::_fused_adamw_(list(params, n), list(grads, n), list(exp_avgs, n), list(exp_avg_sqs, n),
                      {}, list(steps, n), lr, beta1, beta2, weight_decay, eps, false, false);
  });
}

// Lion in place: params *= decay; params -= lr * sign(lerp(m, g, 1 - beta1)); m = lerp(m, g,
// 1 - beta2).
int sweep_foreach_lion(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs, size_t n,
                       double lr, double beta1, double beta2, double decay, char* err,
                       size_t errlen) {
  return guarded(err, errlen, [&] {
    auto p = list(params, n);
    auto g = list(grads, n);
    auto m = list(exp_avgs, n);
    if (decay != 1.0) at::_foreach_mul_(p, decay);
    auto c = at::_foreach_lerp(m, g, 1.0 - beta1);
    at::_foreach_sign_(c);
    at::_foreach_add_(p, c, -lr);
    at::_foreach_lerp_(m, g, 1.0 - beta2);
  });
}

// The L2 norm of n tensors together, in f64 on the host (one device sync).
int sweep_foreach_norm(at::Tensor** ts, size_t n, double* out, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    auto norms = at::_foreach_norm(list(ts, n), 2);
    *out = at::linalg_vector_norm(at::stack(norms), 2).item<double>();
  });
}

// In place: each of n tensors *= factor.
int sweep_foreach_mul(at::Tensor** ts, size_t n, double factor, char* err, size_t errlen) {
  return guarded(err, errlen, [&] { at::_foreach_mul_(list(ts, n), factor); });
}

// In place: each of n tensors = 0.
int sweep_foreach_zero(at::Tensor** ts, size_t n, char* err, size_t errlen) {
  return guarded(err, errlen, [&] { at::_foreach_zero_(list(ts, n)); });
}

// Drop the gradient of each of n tensors (undefined until the next backward allocates it).
int sweep_free_grads(at::Tensor** ts, size_t n, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    for (size_t i = 0; i < n; i++) ts[i]->mutable_grad().reset();
  });
}

// The peak of the bytes libtorch's CUDA caching allocator has handed out on `device` since the
// process started (or the last reset, with reset != 0, which also starts a new peak); -1 in a
// build without CUDA or where the device has no allocator state.
int64_t sweep_cuda_peak_allocated(int device, int reset) {
#ifdef SWEEP_CUDA_STATS
  try {
    auto d = static_cast<c10::DeviceIndex>(device);
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(d);
    auto peak = stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
    if (reset) c10::cuda::CUDACachingAllocator::resetPeakStats(d);
    return peak;
  } catch (...) {
    return -1;
  }
#else
  (void)device;
  (void)reset;
  return -1;
#endif
}

}  // extern "C"
