// sweep's one C++ shim: what tch does not bind of libtorch, behind a few C functions. Two parts,
// compiled into one library by build.rs against the LIBTORCH headers that torch-sys uses:
// kernels.cpp (libtorch's fused and multi-tensor optimizer kernels; always built) and c10d.cpp
// (process groups for multi-process training; built where Gloo's headers are).
//
// Every function catches C++ exceptions and returns nonzero (or NULL) with the message's first
// line in `err`; nothing throws across the C boundary. Tensors are tch's (at::Tensor*).
#pragma once

#include <cstring>
#include <string>

static inline void set_err(char* err, size_t n, const std::string& msg) {
  if (err == nullptr || n == 0) return;
  // libtorch messages carry a C++ backtrace after the first line.
  std::string first = msg.substr(0, msg.find('\n'));
  std::strncpy(err, first.c_str(), n - 1);
  err[n - 1] = 0;
}

template <typename F>
static int guarded(char* err, size_t n, F f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    set_err(err, n, e.what());
  } catch (...) {
    set_err(err, n, "unknown C++ exception");
  }
  return 1;
}
