//! One run over many processes: the world a rank lives in (its rank, the world size, and the
//! collectives of libtorch's c10d, reached through the C++ shim's `src/shim/c10d.cpp`). A
//! single-process run lives in the world of one, whose collectives do nothing, so the training
//! loop has one path.
//!
//! The shim is built when Gloo's headers are there at build time (`cfg(sweep_c10d)`, see
//! build.rs); a binary without it trains in one process and refuses more with a clear error.

use std::time::Duration;

use tch::Tensor;

/// Where and how the ranks of one run meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// This process's rank, 0..size.
    pub rank: usize,
    /// The number of ranks.
    pub size: usize,
    /// This process's rank among the ranks of its node (its GPU there), 0..ranks per node.
    pub local_rank: usize,
    /// The host of rank 0, which serves the TCPStore.
    pub addr: String,
    /// The store's port.
    pub port: u16,
    /// How long any rendezvous or collective may take before the rank gives up.
    pub timeout: Duration,
    /// How long the other ranks wait for work rank 0 does alone (an evaluation, a checkpoint).
    pub main_timeout: Duration,
    /// Ranks on this node (LOCAL_WORLD_SIZE), where the launcher says.
    pub local_size: Option<usize>,
}

/// Multi-process failures.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The environment describes no valid world.
    #[error("{0}")]
    Env(String),
    /// This binary has no c10d shim.
    #[error("this binary was built without multi-process training (Gloo's headers were missing at build time: install libgloo-dev and rebuild); it trains in one process only")]
    NotBuilt,
    /// A rendezvous or a collective failed.
    #[error("rank {rank} of {size}: {what}: {detail}")]
    Collective {
        /// This rank.
        rank: usize,
        /// The world size.
        size: usize,
        /// The operation.
        what: String,
        /// c10d's words.
        detail: String,
    },
}

/// The c10d backend of a world: NCCL for CUDA tensors where it is built in, Gloo for CPU
/// tensors (and for CUDA tensors otherwise: they are staged through host memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// ProcessGroupGloo.
    Gloo,
    /// ProcessGroupNCCL.
    Nccl,
}

impl Backend {
    /// Its name, as c10d and result.json say it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }

    /// Whether NCCL is built into this binary (`cfg(sweep_nccl)`: a CUDA build with NCCL's
    /// and CUDA's headers, see build.rs).
    pub fn nccl_built() -> bool {
        cfg!(sweep_nccl)
    }

    /// The backend for ranks on `cuda` (or the CPU), `shared` when several ranks of a node use
    /// one GPU, and the choice of SWEEP_DIST_BACKEND (`auto`, the default: NCCL on CUDA where
    /// built and each rank has a GPU of its own, else Gloo).
    pub fn choose(cuda: bool, shared: bool, choice: Option<&str>) -> Result<Backend, DistError> {
        match choice.map(str::trim).unwrap_or("auto") {
            "auto" | "" if cuda && !shared && Backend::nccl_built() => Ok(Backend::Nccl),
            "auto" | "" | "gloo" => Ok(Backend::Gloo),
            "nccl" if shared => Err(DistError::Env(
                "SWEEP_DIST_BACKEND=nccl: NCCL needs each rank on a GPU of its own, and --device cuda:K puts every rank of this node on GPU K; use gloo, or --device cuda (one GPU per rank)".into(),
            )),
            "nccl" if !cuda => Err(DistError::Env(
                "SWEEP_DIST_BACKEND=nccl: NCCL reduces CUDA tensors, and these ranks train on the CPU; use gloo (or auto)".into(),
            )),
            "nccl" if !Backend::nccl_built() => Err(DistError::Env(
                "SWEEP_DIST_BACKEND=nccl: this binary has no NCCL (build it with scripts/build-cuda, which finds NCCL's and CUDA's headers), or use gloo".into(),
            )),
            "nccl" => Ok(Backend::Nccl),
            other => Err(DistError::Env(format!(
                "SWEEP_DIST_BACKEND={other}: use auto, gloo or nccl"
            ))),
        }
    }
}

impl Rendezvous {
    /// Rank `rank` of `size` ranks of this machine meeting on 127.0.0.1:`port`.
    pub fn local(rank: usize, size: usize, port: u16, timeout: Duration) -> Rendezvous {
        Rendezvous {
            rank,
            size,
            local_rank: rank,
            addr: "127.0.0.1".into(),
            port,
            timeout,
            main_timeout: timeout,
            local_size: Some(size),
        }
    }

    /// The world described by torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    /// MASTER_PORT), from a lookup of the environment; None when WORLD_SIZE is absent or 1,
    /// unless SWEEP_DIST_BACKEND names a backend: then WORLD_SIZE=1 is a world of one that
    /// goes through that backend (to check a backend on one GPU).
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        timeout: Duration,
        main_timeout: Duration,
    ) -> Result<Option<Rendezvous>, DistError> {
        let num = |name: &str| -> Result<Option<usize>, DistError> {
            var(name)
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| DistError::Env(format!("{name}={v}: not a whole number")))
                })
                .transpose()
        };
        let size = num("WORLD_SIZE")?.unwrap_or(1);
        let forced = var("WORLD_SIZE").is_some()
            && var("SWEEP_DIST_BACKEND").is_some_and(|b| !matches!(b.trim(), "auto" | ""));
        if size == 0 || (size == 1 && !forced) {
            return Ok(None);
        }
        let rank = num("RANK")?
            .ok_or_else(|| DistError::Env(format!("WORLD_SIZE={size} but RANK is not set")))?;
        if rank >= size {
            return Err(DistError::Env(format!(
                "RANK={rank} is not below WORLD_SIZE={size}"
            )));
        }
        let local_rank = num("LOCAL_RANK")?.unwrap_or(rank);
        let local_size = num("LOCAL_WORLD_SIZE")?;
        let addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = match var("MASTER_PORT") {
            Some(p) => p
                .trim()
                .parse::<u16>()
                .map_err(|_| DistError::Env(format!("MASTER_PORT={p}: not a port number")))?,
            None => 29500,
        };
        Ok(Some(Rendezvous {
            rank,
            size,
            local_rank,
            addr,
            port,
            timeout,
            main_timeout,
            local_size,
        }))
    }
}

/// The world of one rank.
#[derive(Debug)]
pub struct World {
    rank: usize,
    size: usize,
    backend: Backend,
    /// Where this rank's tensors live (NCCL reduces tensors of this rank's GPU).
    device: tch::Device,
    /// How long the others wait for rank 0's work alone.
    main_timeout: Duration,
    /// Calls of [`World::after_main`] so far: every rank makes them in the same order, so the
    /// count makes each one's store key unique.
    main_seq: std::sync::atomic::AtomicU64,
    #[cfg(sweep_c10d)]
    pg: Option<ffi::ProcessGroup>,
}

impl World {
    /// The world of one process.
    pub fn single() -> World {
        World {
            rank: 0,
            size: 1,
            backend: Backend::Gloo,
            device: tch::Device::Cpu,
            main_timeout: Duration::ZERO,
            main_seq: Default::default(),
            #[cfg(sweep_c10d)]
            pg: None,
        }
    }

    /// Meet the other ranks through `backend`; this rank trains on `device`.
    pub fn connect(
        r: &Rendezvous,
        backend: Backend,
        device: tch::Device,
    ) -> Result<World, DistError> {
        #[cfg(sweep_c10d)]
        {
            // A peer that dies must surface as a collective's error on this rank, named by the
            // launcher as a consequence, not kill this rank too: Gloo writes to its sockets
            // without MSG_NOSIGNAL, and the binary restores SIGPIPE's default for pipes.
            // SAFETY: signal(2) changes a process-wide disposition; no memory effects.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            }
            let pg = ffi::ProcessGroup::new(r, backend, device)?;
            Ok(World {
                rank: r.rank,
                size: r.size,
                backend,
                device,
                main_timeout: r.main_timeout,
                main_seq: Default::default(),
                pg: Some(pg),
            })
        }
        #[cfg(not(sweep_c10d))]
        {
            let _ = (r, backend, device);
            Err(DistError::NotBuilt)
        }
    }

    /// The backend of the collectives.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether c10d is built into this binary.
    pub fn available() -> bool {
        cfg!(sweep_c10d)
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }

    /// For result.json: `N ranks, BACKEND`, or None for one process.
    pub fn describe(&self) -> Option<String> {
        (!self.trivial()).then(|| {
            let ranks = if self.size == 1 { "rank" } else { "ranks" };
            format!("{} {ranks}, {}", self.size, self.backend.name())
        })
    }

    /// Whether this rank writes the run's outputs (rank 0).
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// In place: `t` becomes the sum of `t` over the ranks (a no-op in a world of one).
    pub fn all_reduce_sum(&self, t: &mut Tensor) -> Result<(), DistError> {
        #[cfg(sweep_c10d)]
        if let Some(pg) = &self.pg {
            return self.on_backend_device(t, "all-reduce", |h| pg.all_reduce_sum(h));
        }
        let _ = t;
        Ok(())
    }

    /// In place: `t` becomes rank `root`'s `t`.
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<(), DistError> {
        #[cfg(sweep_c10d)]
        if let Some(pg) = &self.pg {
            return self.on_backend_device(t, "broadcast", |h| pg.broadcast(h, root));
        }
        let _ = (t, root);
        Ok(())
    }

    /// In place on rank `root`: `t` becomes the sum of `t` over the ranks (elsewhere the
    /// backend may use `t` as scratch space).
    pub fn reduce_sum(&self, t: &mut Tensor, root: usize) -> Result<(), DistError> {
        #[cfg(sweep_c10d)]
        if let Some(pg) = &self.pg {
            return self.on_backend_device(t, "reduce", |h| pg.reduce_sum(h, root));
        }
        let _ = (t, root);
        Ok(())
    }

    /// Run a collective on `t` where the backend can: Gloo takes CUDA tensors through a copy in
    /// host memory (ProcessGroupGloo's own CUDA path is not in every libtorch build).
    #[cfg(sweep_c10d)]
    fn on_backend_device(
        &self,
        t: &mut Tensor,
        what: &str,
        op: impl FnOnce(&mut Tensor) -> Result<(), DistError>,
    ) -> Result<(), DistError> {
        if self.backend == Backend::Nccl || t.device() == tch::Device::Cpu {
            return op(t);
        }
        let mut host = t.f_to(tch::Device::Cpu).map_err(|e| self.error(what, e))?;
        op(&mut host)?;
        t.f_copy_(&host).map_err(|e| self.error(what, e))?;
        Ok(())
    }

    /// Wait until every rank is here.
    pub fn barrier(&self) -> Result<(), DistError> {
        #[cfg(sweep_c10d)]
        if let Some(pg) = &self.pg {
            // NCCL's barrier guesses a GPU from the rank; a sum on this rank's GPU is exact.
            if self.backend == Backend::Nccl {
                return self.sum_f64(0.0).map(|_| ());
            }
            return pg.barrier();
        }
        Ok(())
    }

    /// After work rank 0 does alone (`what`, e.g. `eval/120`, unique in the run): rank 0 says it
    /// is done and the others wait for that through the store, up to the rank-0 timeout
    /// (SWEEP_DIST_MAIN_TIMEOUT_S), instead of inside a collective, whose shorter timeout (and
    /// NCCL's watchdog) would end the run during a long evaluation or checkpoint.
    pub fn after_main(&self, what: &str) -> Result<(), DistError> {
        #[cfg(sweep_c10d)]
        if let Some(pg) = &self.pg {
            if self.size == 1 {
                return Ok(());
            }
            let n = self
                .main_seq
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let key = format!("{what}#{n}");
            if self.is_main() {
                return pg.store_set(&key);
            } else {
                return pg.store_wait(&key, self.main_timeout).map_err(|e| match e {
                    DistError::Collective {
                        rank, size, detail, ..
                    } => DistError::Collective {
                        rank,
                        size,
                        what: format!(
                            "waiting for rank 0's {what} (SWEEP_DIST_MAIN_TIMEOUT_S = {} s)",
                            self.main_timeout.as_secs()
                        ),
                        detail,
                    },
                    e => e,
                });
            }
        }
        let _ = what;
        Ok(())
    }

    /// Whether collectives do nothing: one process without a process group.
    fn trivial(&self) -> bool {
        #[cfg(sweep_c10d)]
        return self.pg.is_none();
        #[cfg(not(sweep_c10d))]
        true
    }

    /// The sum of a number over the ranks.
    pub fn sum_f64(&self, x: f64) -> Result<f64, DistError> {
        if self.trivial() {
            return Ok(x);
        }
        // NCCL reduces CUDA tensors only; the number travels on the device of the gradients.
        let device = match self.backend {
            Backend::Nccl => self.device,
            Backend::Gloo => tch::Device::Cpu,
        };
        let mut t = Tensor::from_slice(&[x]).to(device);
        self.all_reduce_sum(&mut t)?;
        t.f_double_value(&[0])
            .map_err(|e| self.error("reading a sum", e))
    }

    /// Sum the tensors in place over the ranks with one collective: they are flattened into
    /// one bucket, reduced, and copied back.
    pub fn all_reduce_sum_flat(&self, tensors: &mut [Tensor]) -> Result<(), DistError> {
        self.flat(tensors, true, |w, bucket| w.all_reduce_sum(bucket))
    }

    /// Sum the tensors over the ranks into rank `root`'s, with one collective through a bucket
    /// (the others' tensors are left as they were).
    pub fn reduce_sum_flat(&self, tensors: &mut [Tensor], root: usize) -> Result<(), DistError> {
        self.flat(tensors, self.rank == root, |w, bucket| {
            w.reduce_sum(bucket, root)
        })
    }

    /// `op` on the tensors flattened into one bucket; with `copy_back`, the bucket's values
    /// are copied back into them.
    fn flat(
        &self,
        tensors: &mut [Tensor],
        copy_back: bool,
        op: impl FnOnce(&World, &mut Tensor) -> Result<(), DistError>,
    ) -> Result<(), DistError> {
        if self.trivial() || tensors.is_empty() {
            return Ok(());
        }
        let _g = tch::no_grad_guard();
        let flat: Vec<Tensor> = tensors.iter().map(|t| t.reshape([-1])).collect();
        let mut bucket = Tensor::f_cat(&flat, 0).map_err(|e| self.error("bucketing", e))?;
        drop(flat);
        op(self, &mut bucket)?;
        if !copy_back {
            return Ok(());
        }
        let mut at = 0i64;
        for t in tensors.iter_mut() {
            let n = t.numel() as i64;
            let part = bucket
                .f_narrow(0, at, n)
                .and_then(|p| p.f_view_as(t))
                .map_err(|e| self.error("unbucketing", e))?;
            t.f_copy_(&part).map_err(|e| self.error("unbucketing", e))?;
            at += n;
        }
        Ok(())
    }

    /// From now until the returned guard is dropped, each of `params`' gradients (a trainable
    /// parameter and its owner rank) is summed into its owner's and freed on every other rank
    /// as soon as a backward pass completes it (ZeRO stage 2 during the backward: through a
    /// post-accumulate-grad hook of the shim, since tch binds none). Every rank must pass the
    /// same parameters and run the same graph. None in a world of one.
    pub fn reduce_in_backward(
        &self,
        params: &[(&Tensor, usize)],
    ) -> Result<Option<InBackward>, DistError> {
        #[cfg(sweep_c10d)]
        if let Some(pg) = &self.pg {
            return Ok(Some(InBackward {
                reducer: pg.reduce_in_backward(params)?,
            }));
        }
        let _ = params;
        Ok(None)
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) -> DistError {
        DistError::Collective {
            rank: self.rank,
            size: self.size,
            what: what.into(),
            detail: e.to_string(),
        }
    }
}

/// Gradients reduced during the backward pass ([`World::reduce_in_backward`]); dropping it
/// removes the hooks.
#[derive(Debug)]
pub struct InBackward {
    #[cfg(sweep_c10d)]
    reducer: ffi::Reducer,
}

impl InBackward {
    /// The time the reduces have taken so far.
    pub fn spent(&self) -> Duration {
        #[cfg(sweep_c10d)]
        return self.reducer.spent();
        #[cfg(not(sweep_c10d))]
        Duration::ZERO
    }
}

#[cfg(sweep_c10d)]
mod ffi {
    //! The C functions of src/shim/c10d.cpp.

    use std::ffi::{c_char, c_int, c_void, CStr, CString};

    use tch::Tensor;

    use super::{Backend, DistError, Rendezvous};

    extern "C" {
        #[allow(clippy::too_many_arguments)]
        fn sweep_pg_new(
            backend: *const c_char,
            host: *const c_char,
            port: c_int,
            rank: c_int,
            world: c_int,
            device_host: *const c_char,
            gpu: c_int,
            timeout_ms: c_int,
            err: *mut c_char,
            errlen: usize,
        ) -> *mut c_void;
        fn sweep_pg_free(p: *mut c_void);
        fn sweep_reduce_in_backward(
            p: *mut c_void,
            params: *const *mut c_void,
            owners: *const c_int,
            n: c_int,
            rank: c_int,
            err: *mut c_char,
            errlen: usize,
        ) -> *mut c_void;
        fn sweep_reducer_nanos(r: *mut c_void) -> i64;
        fn sweep_reducer_free(r: *mut c_void);
        fn sweep_pg_allreduce_sum(
            p: *mut c_void,
            t: *mut c_void,
            err: *mut c_char,
            n: usize,
        ) -> c_int;
        fn sweep_pg_broadcast(
            p: *mut c_void,
            t: *mut c_void,
            root: c_int,
            err: *mut c_char,
            n: usize,
        ) -> c_int;
        fn sweep_pg_reduce_sum(
            p: *mut c_void,
            t: *mut c_void,
            root: c_int,
            err: *mut c_char,
            n: usize,
        ) -> c_int;
        fn sweep_pg_barrier(p: *mut c_void, err: *mut c_char, n: usize) -> c_int;
        fn sweep_pg_store_set(
            p: *mut c_void,
            key: *const c_char,
            err: *mut c_char,
            n: usize,
        ) -> c_int;
        fn sweep_pg_store_wait(
            p: *mut c_void,
            key: *const c_char,
            timeout_ms: c_int,
            err: *mut c_char,
            n: usize,
        ) -> c_int;
    }

    const ERR: usize = 1024;

    /// An owned c10d process group.
    #[derive(Debug)]
    pub struct ProcessGroup {
        ptr: *mut c_void,
        rank: usize,
        size: usize,
    }

    // SAFETY: the process group is used from one thread at a time (the trainer's).
    unsafe impl Send for ProcessGroup {}
    unsafe impl Sync for ProcessGroup {}

    fn message(buf: &[u8]) -> String {
        CStr::from_bytes_until_nul(buf)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown error".into())
    }

    impl ProcessGroup {
        pub fn new(
            r: &Rendezvous,
            backend: Backend,
            device: tch::Device,
        ) -> Result<ProcessGroup, DistError> {
            let c =
                |s: &str| CString::new(s).map_err(|_| DistError::Env(format!("{s:?} holds a NUL")));
            let (name, host) = (c(backend.name())?, c(&r.addr)?);
            let gpu = match device {
                tch::Device::Cuda(i) => i as c_int,
                _ => -1,
            };
            // On one machine the ranks meet on loopback; across nodes Gloo binds this host's name.
            let loopback = r.addr == "127.0.0.1" || r.addr == "localhost";
            let device_host = c(if loopback { "127.0.0.1" } else { "" })?;
            let mut err = vec![0u8; ERR];
            // SAFETY: valid C strings and an error buffer of ERR bytes; the shim catches every
            // C++ exception.
            let ptr = unsafe {
                sweep_pg_new(
                    name.as_ptr(),
                    host.as_ptr(),
                    c_int::from(r.port),
                    r.rank as c_int,
                    r.size as c_int,
                    device_host.as_ptr(),
                    gpu,
                    r.timeout.as_millis().min(i32::MAX as u128) as c_int,
                    err.as_mut_ptr() as *mut c_char,
                    ERR,
                )
            };
            if ptr.is_null() {
                let detail = message(&err);
                let in_use = detail.contains("EADDRINUSE") || detail.contains("already in use");
                let what = if in_use && r.rank == 0 {
                    format!(
                        "serving the ranks' store on port {} of this host: the port is in use (another job's store or a stray process holds it); free it or set MASTER_PORT to a free port",
                        r.port
                    )
                } else {
                    format!("meeting the other ranks at {}:{}", r.addr, r.port)
                };
                return Err(DistError::Collective {
                    rank: r.rank,
                    size: r.size,
                    what,
                    detail,
                });
            }
            Ok(ProcessGroup {
                ptr,
                rank: r.rank,
                size: r.size,
            })
        }

        fn check(&self, what: &str, code: c_int, err: &[u8]) -> Result<(), DistError> {
            if code == 0 {
                return Ok(());
            }
            Err(DistError::Collective {
                rank: self.rank,
                size: self.size,
                what: what.into(),
                detail: message(err),
            })
        }

        pub fn all_reduce_sum(&self, t: &mut Tensor) -> Result<(), DistError> {
            let mut err = vec![0u8; ERR];
            // SAFETY: a live process group and a live tch tensor (at::Tensor*).
            let code = unsafe {
                sweep_pg_allreduce_sum(
                    self.ptr,
                    t.as_mut_ptr() as *mut c_void,
                    err.as_mut_ptr() as *mut c_char,
                    ERR,
                )
            };
            self.check("all-reduce", code, &err)
        }

        pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<(), DistError> {
            self.rooted("broadcast", sweep_pg_broadcast, t, root)
        }

        pub fn reduce_sum(&self, t: &mut Tensor, root: usize) -> Result<(), DistError> {
            self.rooted("reduce", sweep_pg_reduce_sum, t, root)
        }

        /// A collective with a root rank.
        fn rooted(
            &self,
            what: &str,
            f: unsafe extern "C" fn(*mut c_void, *mut c_void, c_int, *mut c_char, usize) -> c_int,
            t: &mut Tensor,
            root: usize,
        ) -> Result<(), DistError> {
            let mut err = vec![0u8; ERR];
            // SAFETY: a live process group, a live tch tensor (at::Tensor*) and an error
            // buffer of ERR bytes.
            let code = unsafe {
                f(
                    self.ptr,
                    t.as_mut_ptr() as *mut c_void,
                    root as c_int,
                    err.as_mut_ptr() as *mut c_char,
                    ERR,
                )
            };
            self.check(what, code, &err)
        }

        pub fn store_set(&self, key: &str) -> Result<(), DistError> {
            let key =
                CString::new(key).map_err(|_| DistError::Env(format!("{key:?} holds a NUL")))?;
            let mut err = vec![0u8; ERR];
            // SAFETY: a live process group, a C string and an error buffer of ERR bytes.
            let code = unsafe {
                sweep_pg_store_set(self.ptr, key.as_ptr(), err.as_mut_ptr() as *mut c_char, ERR)
            };
            self.check("marking rank 0's work done", code, &err)
        }

        pub fn store_wait(&self, key: &str, timeout: std::time::Duration) -> Result<(), DistError> {
            let key =
                CString::new(key).map_err(|_| DistError::Env(format!("{key:?} holds a NUL")))?;
            let mut err = vec![0u8; ERR];
            // SAFETY: as above.
            let code = unsafe {
                sweep_pg_store_wait(
                    self.ptr,
                    key.as_ptr(),
                    timeout.as_millis().min(i32::MAX as u128) as c_int,
                    err.as_mut_ptr() as *mut c_char,
                    ERR,
                )
            };
            self.check("waiting for rank 0", code, &err)
        }

        pub fn barrier(&self) -> Result<(), DistError> {
            let mut err = vec![0u8; ERR];
            // SAFETY: a live process group.
            let code = unsafe { sweep_pg_barrier(self.ptr, err.as_mut_ptr() as *mut c_char, ERR) };
            self.check("barrier", code, &err)
        }
    }

    /// The shim's hooks that reduce gradients in the backward pass.
    #[derive(Debug)]
    pub struct Reducer {
        ptr: *mut c_void,
    }

    // SAFETY: as the process group's: the hooks run on the thread that runs the backward.
    unsafe impl Send for Reducer {}
    unsafe impl Sync for Reducer {}

    impl Reducer {
        pub fn spent(&self) -> std::time::Duration {
            // SAFETY: a live reducer.
            let nanos = unsafe { sweep_reducer_nanos(self.ptr) };
            std::time::Duration::from_nanos(nanos.max(0) as u64)
        }
    }

    impl Drop for Reducer {
        fn drop(&mut self) {
            // SAFETY: made by sweep_reduce_in_backward, freed once.
            unsafe { sweep_reducer_free(self.ptr) }
        }
    }

    impl ProcessGroup {
        pub fn reduce_in_backward(
            &self,
            params: &[(&Tensor, usize)],
        ) -> Result<Reducer, DistError> {
            let ptrs: Vec<*mut c_void> = params
                .iter()
                .map(|(t, _)| t.as_ptr() as *mut c_void)
                .collect();
            let owners: Vec<c_int> = params.iter().map(|(_, o)| *o as c_int).collect();
            let mut err = vec![0u8; ERR];
            // SAFETY: live tch tensors (at::Tensor*), as many owners, an error buffer of ERR
            // bytes; the shim copies the tensors' handles, so the pointers need not outlive it.
            let ptr = unsafe {
                sweep_reduce_in_backward(
                    self.ptr,
                    ptrs.as_ptr(),
                    owners.as_ptr(),
                    params.len() as c_int,
                    self.rank as c_int,
                    err.as_mut_ptr() as *mut c_char,
                    ERR,
                )
            };
            if ptr.is_null() {
                return Err(DistError::Collective {
                    rank: self.rank,
                    size: self.size,
                    what: "setting up the reduce of gradients in the backward pass".into(),
                    detail: message(&err),
                });
            }
            Ok(Reducer { ptr })
        }
    }

    impl Drop for ProcessGroup {
        fn drop(&mut self) {
            // SAFETY: made by sweep_pg_new, freed once.
            unsafe { sweep_pg_free(self.ptr) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port that was free a moment ago.
    #[cfg(sweep_c10d)]
    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_world_comes_from_torchruns_variables() {
        let t = Duration::from_secs(5);
        let from_vars = |v| Rendezvous::from_vars(v, t, t);
        assert_eq!(from_vars(vars(&[])).unwrap(), None);
        assert_eq!(from_vars(vars(&[("WORLD_SIZE", "1")])).unwrap(), None);
        let r = from_vars(vars(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29600"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (r.rank, r.size, r.addr.as_str(), r.port),
            (1, 2, "10.0.0.1", 29600)
        );
        // A world of one through a named backend, to check that backend on one GPU.
        let one = from_vars(vars(&[
            ("WORLD_SIZE", "1"),
            ("RANK", "0"),
            ("SWEEP_DIST_BACKEND", "gloo"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((one.size, one.local_rank), (1, 0));
        for bad in [
            vec![("WORLD_SIZE", "2")],
            vec![("WORLD_SIZE", "2"), ("RANK", "2")],
            vec![("WORLD_SIZE", "two")],
            vec![("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "99999")],
        ] {
            assert!(Rendezvous::from_vars(vars(&bad), t, t).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_backend_follows_the_device_and_the_choice() {
        let choose = Backend::choose;
        assert_eq!(choose(false, false, None).unwrap(), Backend::Gloo);
        let cuda_default = if Backend::nccl_built() {
            Backend::Nccl
        } else {
            Backend::Gloo
        };
        assert_eq!(choose(true, false, None).unwrap(), cuda_default);
        assert_eq!(choose(true, false, Some("")).unwrap(), cuda_default);
        assert_eq!(choose(true, false, Some("gloo")).unwrap(), Backend::Gloo);
        // Ranks sharing one GPU: NCCL refuses them, so auto takes Gloo.
        assert_eq!(choose(true, true, None).unwrap(), Backend::Gloo);
        let e = choose(true, true, Some("nccl")).unwrap_err().to_string();
        assert!(e.contains("a GPU of its own"), "{e}");
        let e = choose(false, false, Some("nccl")).unwrap_err().to_string();
        assert!(e.contains("train on the CPU"), "{e}");
        if !Backend::nccl_built() {
            let e = choose(true, false, Some("nccl")).unwrap_err().to_string();
            assert!(e.contains("scripts/build-cuda"), "{e}");
        }
        let e = choose(true, false, Some("mpi")).unwrap_err().to_string();
        assert!(e.contains("use auto, gloo or nccl"), "{e}");
    }

    /// scripts/test installs Gloo's headers: there, a binary without the shim is a broken
    /// set-up, not a reason to skip the multi-process tests.
    #[test]
    fn the_shim_is_built_where_the_tests_require_it() {
        if std::env::var("SWEEP_TESTS_REQUIRE_SETUP").as_deref() == Ok("1") {
            assert!(
                World::available(),
                "built without the c10d shim: is libgloo-dev installed? (scripts/setup-libtorch)"
            );
        }
        let e = World::single();
        assert_eq!((e.rank(), e.size(), e.is_main()), (0, 1, true));
    }

    /// Two ranks in two threads of this process meet at a TCPStore on loopback and reduce,
    /// broadcast and wait through Gloo.
    #[cfg(sweep_c10d)]
    #[test]
    fn two_ranks_reduce_and_broadcast_through_gloo() {
        let port = free_port();
        let ranks: Vec<_> = (0..2)
            .map(|rank| {
                std::thread::spawn(move || {
                    let w = World::connect(
                        &Rendezvous::local(rank, 2, port, Duration::from_secs(30)),
                        Backend::Gloo,
                        tch::Device::Cpu,
                    )
                    .unwrap();
                    let mut t = Tensor::from_slice(&[1.0f32 + rank as f32, 10.0]);
                    w.all_reduce_sum(&mut t).unwrap();
                    let sum = Vec::<f32>::try_from(&t).unwrap();
                    let mut parts = [
                        Tensor::from_slice(&[rank as f32; 3]).reshape([3]),
                        Tensor::from_slice(&[1.0f32; 4]).reshape([2, 2]),
                    ];
                    w.all_reduce_sum_flat(&mut parts).unwrap();
                    let flat = (
                        Vec::<f32>::try_from(&parts[0]).unwrap(),
                        Vec::<f32>::try_from(&parts[1].reshape([-1])).unwrap(),
                    );
                    let mut b = Tensor::from_slice(&[rank as f64 + 5.0]);
                    w.broadcast(&mut b, 1).unwrap();
                    // Into rank 1's tensors only; rank 0 keeps its own.
                    let mut to_one = [
                        Tensor::from_slice(&[rank as f32 + 1.0; 2]),
                        Tensor::from_slice(&[10.0f32 * (rank as f32 + 1.0)]),
                    ];
                    w.reduce_sum_flat(&mut to_one, 1).unwrap();
                    let reduced = (
                        Vec::<f32>::try_from(&to_one[0]).unwrap(),
                        Vec::<f32>::try_from(&to_one[1]).unwrap(),
                    );
                    w.barrier().unwrap();
                    (
                        sum,
                        flat,
                        b.double_value(&[0]),
                        w.sum_f64(0.5).unwrap(),
                        reduced,
                    )
                })
            })
            .collect();
        for (rank, h) in ranks.into_iter().enumerate() {
            let (sum, flat, b, s, reduced) = h.join().unwrap();
            assert_eq!(sum, vec![3.0, 20.0]);
            assert_eq!(flat, (vec![1.0; 3], vec![2.0; 4]));
            assert_eq!(b, 6.0, "rank 1's value");
            assert_eq!(s, 1.0);
            let want = if rank == 1 {
                (vec![3.0; 2], vec![30.0])
            } else {
                (vec![1.0; 2], vec![10.0])
            };
            assert_eq!(reduced, want, "rank {rank}");
        }
    }

    /// Work rank 0 does alone may outlast the collectives' timeout: the others wait for it
    /// through the store, up to the rank-0 timeout, and past that give up naming what they
    /// waited for.
    #[cfg(sweep_c10d)]
    #[test]
    fn the_others_wait_for_rank_0_beyond_the_collective_timeout() {
        for (main_timeout, ok) in [(20, true), (1, false)] {
            let port = free_port();
            let ranks: Vec<_> = (0..2)
                .map(|rank| {
                    std::thread::spawn(move || {
                        // Collectives give up after 2 s; rank 0 works alone for 5.
                        let r = Rendezvous::local(rank, 2, port, Duration::from_secs(2));
                        let w = World::connect(&r, Backend::Gloo, tch::Device::Cpu).unwrap();
                        let w = World {
                            main_timeout: Duration::from_secs(main_timeout),
                            ..w
                        };
                        if w.is_main() {
                            std::thread::sleep(Duration::from_secs(5));
                        }
                        let waited = w.after_main("evaluation");
                        // Rank 0 stays until rank 1 has given up (its store serves rank 1).
                        w.barrier().ok();
                        // A collective after the wait, where every rank waited.
                        waited.map(|_| if ok { w.sum_f64(1.0).unwrap() } else { 0.0 })
                    })
                })
                .collect();
            let out: Vec<_> = ranks.into_iter().map(|h| h.join().unwrap()).collect();
            if ok {
                for o in out {
                    assert_eq!(o.unwrap(), 2.0);
                }
            } else {
                let e = out[1].as_ref().unwrap_err().to_string();
                assert!(e.contains("waiting for rank 0's evaluation"), "{e}");
            }
        }
    }

    /// Rank 0 cannot serve the store on a port another process listens on: it says so at once.
    #[cfg(sweep_c10d)]
    #[test]
    fn a_store_port_in_use_is_named() {
        let held = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let t0 = std::time::Instant::now();
        let e = World::connect(
            &Rendezvous::local(0, 2, port, Duration::from_secs(20)),
            Backend::Gloo,
            tch::Device::Cpu,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(&format!("port {port} of this host: the port is in use")),
            "{e}"
        );
        assert!(e.contains("MASTER_PORT"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(15), "not a timeout: {e}");
    }

    /// A rank whose peer never comes gives up after its timeout, naming the address.
    #[cfg(sweep_c10d)]
    #[test]
    fn a_missing_peer_times_out_with_the_address() {
        let port = free_port();
        let e = World::connect(
            &Rendezvous::local(0, 2, port, Duration::from_secs(2)),
            Backend::Gloo,
            tch::Device::Cpu,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
        assert!(e.contains("rank 0 of 2"), "{e}");
    }
}
