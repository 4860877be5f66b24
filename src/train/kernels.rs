//! libtorch's fused and multi-tensor optimizer kernels, through the shim (src/shim/kernels.cpp):
//! `at::_fused_adamw_` (one pass over each parameter instead of eight) and the `_foreach_` family
//! (one call for a whole list of tensors) for LionW, gradient norms, scaling and zeroing. The
//! hand-written per-tensor path of [`super::optim`] is their reference (`Kernels::Reference`).
//! An empty list is a no-op (libtorch refuses one). A build without the shim (libtorch found
//! through LIBTORCH_USE_PYTORCH, whose headers build.rs does not locate) runs the reference.

use std::ffi::{c_char, c_int, c_void, CStr};

use tch::Tensor;

use super::TrainError;

/// Which optimizer kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// libtorch's fused AdamW and multi-tensor (_foreach_) kernels: the default.
    Fused,
    /// The hand-written per-tensor updates, kept as the reference the fused ones are checked
    /// against.
    Reference,
}

impl Kernels {
    /// SWEEP_OPTIMIZER_KERNELS: `fused` (default) or `reference`.
    pub fn from_env(value: Option<&str>) -> Result<Kernels, TrainError> {
        match value.map(str::trim) {
            None | Some("") if !cfg!(sweep_shim) => Ok(Kernels::Reference),
            Some("fused") if !cfg!(sweep_shim) => Err(TrainError::Setting(
                "SWEEP_OPTIMIZER_KERNELS=fused: this build has no C++ shim (build.rs compiles it where LIBTORCH or LIBTORCH_LIB names libtorch): rebuild so, or use reference".into(),
            )),
            None | Some("") | Some("fused") => Ok(Kernels::Fused),
            Some("reference") => Ok(Kernels::Reference),
            Some(other) => Err(TrainError::Setting(format!(
                "SWEEP_OPTIMIZER_KERNELS={other}: use fused (libtorch's fused and multi-tensor kernels, the default) or reference (the hand-written per-tensor updates)"
            ))),
        }
    }
}

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn sweep_fused_adamw(
        params: *const *mut c_void,
        grads: *const *mut c_void,
        exp_avgs: *const *mut c_void,
        exp_avg_sqs: *const *mut c_void,
        steps: *const *mut c_void,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn sweep_foreach_lion(
        params: *const *mut c_void,
        grads: *const *mut c_void,
        exp_avgs: *const *mut c_void,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        decay: f64,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
    fn sweep_foreach_norm(
        ts: *const *mut c_void,
        n: usize,
        out: *mut f64,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
    fn sweep_foreach_mul(
        ts: *const *mut c_void,
        n: usize,
        factor: f64,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
    fn sweep_foreach_zero(
        ts: *const *mut c_void,
        n: usize,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
    fn sweep_free_grads(ts: *const *mut c_void, n: usize, err: *mut c_char, errlen: usize)
        -> c_int;
    fn sweep_cuda_peak_allocated(device: c_int, reset: c_int) -> i64;
}

/// The peak of the bytes libtorch's CUDA caching allocator has handed out on GPU `device` (tch
/// has no allocator statistics); None in a build without CUDA. With `reset`, a new peak starts.
pub fn cuda_peak_allocated(device: usize, reset: bool) -> Option<u64> {
    // SAFETY: a plain C call; the shim catches every C++ exception.
    let peak = unsafe { sweep_cuda_peak_allocated(device as c_int, c_int::from(reset)) };
    u64::try_from(peak).ok()
}

const ERR: usize = 1024;

/// The `at::Tensor*` of each tensor, for the shim (which takes its own references).
fn ptrs(ts: &[&Tensor]) -> Vec<*mut c_void> {
    ts.iter().map(|t| t.as_ptr() as *mut c_void).collect()
}

/// Call a shim function with an error buffer; its message on failure.
fn call(what: &str, f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), TrainError> {
    let mut err = vec![0u8; ERR];
    if f(err.as_mut_ptr() as *mut c_char, ERR) == 0 {
        return Ok(());
    }
    let msg = CStr::from_bytes_until_nul(&err)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown error".into());
    Err(TrainError::Torch(tch::TchError::Torch(format!(
        "{what}: {msg}"
    ))))
}

/// AdamW in place (at::_fused_adamw_): each parameter with its gradient and moments; `steps`
/// holds the step count of the update (1 for the first). Lists of one length, one dtype and one
/// device.
#[allow(clippy::too_many_arguments)]
pub fn fused_adamw(
    params: &[&Tensor],
    grads: &[&Tensor],
    exp_avgs: &[&Tensor],
    exp_avg_sqs: &[&Tensor],
    steps: &Tensor,
    lr: f64,
    betas: [f64; 2],
    weight_decay: f64,
    eps: f64,
) -> Result<(), TrainError> {
    let n = params.len();
    if n == 0 {
        return Ok(());
    }
    let step_list = vec![steps; n];
    let (p, g, m, v, s) = (
        ptrs(params),
        ptrs(grads),
        ptrs(exp_avgs),
        ptrs(exp_avg_sqs),
        ptrs(&step_list),
    );
    // SAFETY: five lists of n live tensors and an error buffer; the shim catches every C++
    // exception.
    call("fused AdamW", |err, len| unsafe {
        sweep_fused_adamw(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            s.as_ptr(),
            n,
            lr,
            betas[0],
            betas[1],
            weight_decay,
            eps,
            err,
            len,
        )
    })
}

/// Lion in place (_foreach_ kernels): parameters scaled by `decay`, then moved by lr times the
/// sign of lerp(m, g, 1 - beta1); the momentum moves to lerp(m, g, 1 - beta2).
pub fn foreach_lion(
    params: &[&Tensor],
    grads: &[&Tensor],
    exp_avgs: &[&Tensor],
    lr: f64,
    betas: [f64; 2],
    decay: f64,
) -> Result<(), TrainError> {
    if params.is_empty() {
        return Ok(());
    }
    let (p, g, m) = (ptrs(params), ptrs(grads), ptrs(exp_avgs));
    // SAFETY: three lists of live tensors of one length and an error buffer.
    call("multi-tensor LionW", |err, len| unsafe {
        sweep_foreach_lion(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            p.len(),
            lr,
            betas[0],
            betas[1],
            decay,
            err,
            len,
        )
    })
}

/// The L2 norm of all the tensors together.
pub fn foreach_norm(ts: &[&Tensor]) -> Result<f64, TrainError> {
    if ts.is_empty() {
        return Ok(0.0);
    }
    let p = ptrs(ts);
    let mut out = 0.0f64;
    // SAFETY: a list of live tensors, an f64 to write and an error buffer.
    call("multi-tensor norm", |err, len| unsafe {
        sweep_foreach_norm(p.as_ptr(), p.len(), &mut out, err, len)
    })?;
    Ok(out)
}

/// Every tensor times `factor`, in place.
pub fn foreach_mul(ts: &[&Tensor], factor: f64) -> Result<(), TrainError> {
    if ts.is_empty() {
        return Ok(());
    }
    let p = ptrs(ts);
    // SAFETY: a list of live tensors and an error buffer.
    call("multi-tensor scaling", |err, len| unsafe {
        sweep_foreach_mul(p.as_ptr(), p.len(), factor, err, len)
    })
}

/// Every tensor zeroed, in place.
pub fn foreach_zero(ts: &[&Tensor]) -> Result<(), TrainError> {
    if ts.is_empty() {
        return Ok(());
    }
    let p = ptrs(ts);
    // SAFETY: a list of live tensors and an error buffer.
    call("multi-tensor zeroing", |err, len| unsafe {
        sweep_foreach_zero(p.as_ptr(), p.len(), err, len)
    })
}

/// Free the gradients of these parameters (tch can zero a gradient but not drop it): the next
/// backward allocates them again. For sharded gradients, which only a multi-process build has.
pub fn free_grads(ts: &[&Tensor]) -> Result<(), TrainError> {
    if ts.is_empty() {
        return Ok(());
    }
    let p = ptrs(ts);
    // SAFETY: a list of live tensors and an error buffer.
    call("freeing gradients", |err, len| unsafe {
        sweep_free_grads(p.as_ptr(), p.len(), err, len)
    })
}

/// The shim's functions where build.rs did not compile it: each fails, saying so (the default
/// kernels are then the reference, which never calls them).
#[cfg(not(sweep_shim))]
mod no_shim {
    use std::ffi::{c_char, c_int, c_void};

    fn fail(err: *mut c_char, n: usize) -> c_int {
        let msg =
            b"this build has no C++ shim (build.rs compiles it where LIBTORCH names libtorch)\0";
        if !err.is_null() && n > 0 {
            let len = msg.len().min(n);
            // SAFETY: the caller's buffer of n bytes; the copy ends with a NUL.
            unsafe {
                std::ptr::copy_nonoverlapping(msg.as_ptr() as *const c_char, err, len);
                *err.add(len - 1) = 0;
            }
        }
        1
    }

    #[no_mangle]
    extern "C" fn sweep_fused_adamw(
        _: *const *mut c_void,
        _: *const *mut c_void,
        _: *const *mut c_void,
        _: *const *mut c_void,
        _: *const *mut c_void,
        _: usize,
        _: f64,
        _: f64,
        _: f64,
        _: f64,
        _: f64,
        err: *mut c_char,
        n: usize,
    ) -> c_int {
        fail(err, n)
    }

    #[no_mangle]
    extern "C" fn sweep_foreach_lion(
        _: *const *mut c_void,
        _: *const *mut c_void,
        _: *const *mut c_void,
        _: usize,
        _: f64,
        _: f64,
        _: f64,
        _: f64,
        err: *mut c_char,
        n: usize,
    ) -> c_int {
        fail(err, n)
    }

    #[no_mangle]
    extern "C" fn sweep_foreach_norm(
        _: *const *mut c_void,
        _: usize,
        _: *mut f64,
        err: *mut c_char,
        n: usize,
    ) -> c_int {
        fail(err, n)
    }

    #[no_mangle]
    extern "C" fn sweep_foreach_mul(
        _: *const *mut c_void,
        _: usize,
        _: f64,
        err: *mut c_char,
        n: usize,
    ) -> c_int {
        fail(err, n)
    }

    #[no_mangle]
    extern "C" fn sweep_foreach_zero(
        _: *const *mut c_void,
        _: usize,
        err: *mut c_char,
        n: usize,
    ) -> c_int {
        fail(err, n)
    }

    #[no_mangle]
    extern "C" fn sweep_free_grads(
        _: *const *mut c_void,
        _: usize,
        err: *mut c_char,
        n: usize,
    ) -> c_int {
        fail(err, n)
    }

    #[no_mangle]
    extern "C" fn sweep_cuda_peak_allocated(_: c_int, _: c_int) -> i64 {
        -1
    }
}
