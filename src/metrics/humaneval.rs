//! `humaneval_pass@1`: greedy completions of HumanEval prompts, each run against its tests in a
//! sandboxed `python3`, scored with the unbiased pass@k estimator (Chen et al., 2021).
//!
//! The sandbox: a fresh temp dir as working directory and HOME; a wall-time limit (the process
//! group is killed); RLIMIT_CPU, RLIMIT_AS, RLIMIT_NPROC and RLIMIT_FSIZE; no network namespace
//! (`unshare -rn`) where it works; and a Python audit hook, installed before the program runs
//! and impossible to remove from Python, that ends the process at once on any socket, process
//! creation, or write/remove/rename outside the temp dir. A program stopped by the hook fails
//! even when it catches the error and passes its tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{Completion, MetricsError, StopRule, TextModel};

/// HumanEval's stop sequences: a completion ends where a new top-level statement starts.
pub const STOP_SEQUENCES: [&str; 5] = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"];

/// Most bytes generated per completion.
pub const MAX_COMPLETION_BYTES: usize = 384;

/// Greedy decoding to the end of the function.
pub const DECODING: Completion = Completion {
    max_new: MAX_COMPLETION_BYTES,
    temperature: 0.0,
    stop: StopRule::FunctionEnd,
};

/// pass@k = 1 - C(n - c, k) / C(n, k) for `n` samples of which `c` pass; None when k is 0 or
/// more than n, or c more than n. Computed as a product, stable for large n.
pub fn pass_at_k(n: u64, c: u64, k: u64) -> Option<f64> {
    if k == 0 || k > n || c > n {
        return None;
    }
    if n - c < k {
        return Some(1.0);
    }
    // C(n-c, k) / C(n, k) = prod_{i = n-c+1}^{n} (1 - k / i).
    let fail: f64 = (n - c + 1..=n).map(|i| 1.0 - k as f64 / i as f64).product();
    Some(1.0 - fail)
}

/// One HumanEval task (other fields of the file, such as the canonical solution, are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HumanEvalTask {
    /// `HumanEval/N`.
    pub task_id: String,
    /// The signature and docstring to complete.
    pub prompt: String,
    /// The function the tests call.
    pub entry_point: String,
    /// Python defining `check(candidate)`.
    pub test: String,
}

/// Parse HumanEval JSONL; a malformed line is an error naming it.
pub fn parse_tasks(text: &str, path: &Path) -> Result<Vec<HumanEvalTask>, MetricsError> {
    let mut tasks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        tasks.push(serde_json::from_str(line).map_err(|e| MetricsError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            msg: format!("not a HumanEval task: {e}"),
        })?);
    }
    if tasks.is_empty() {
        return Err(MetricsError::File {
            path: path.to_path_buf(),
            msg: "no HumanEval tasks".into(),
        });
    }
    Ok(tasks)
}

/// Read HumanEval tasks from `.jsonl` or `.jsonl.gz` (decompressed by `python3`'s gzip, which
/// the metric needs anyway).
pub fn read_tasks(path: &Path) -> Result<Vec<HumanEvalTask>, MetricsError> {
    let bad = |msg: String| MetricsError::File {
        path: path.to_path_buf(),
        msg,
    };
    let text = if path.extension().is_some_and(|e| e == "gz") {
        let out = Command::new("python3")
            .args([
                "-c",
                "import gzip,sys; sys.stdout.buffer.write(gzip.open(sys.argv[1]).read())",
            ])
            .arg(path)
            .output()
            .map_err(|e| bad(format!("running python3 to decompress: {e}")))?;
        if !out.status.success() {
            return Err(bad(format!(
                "decompressing: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        String::from_utf8(out.stdout).map_err(|e| bad(e.to_string()))?
    } else {
        std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?
    };
    parse_tasks(&text, path)
}

/// A completion cut at the first stop sequence.
pub fn truncate_completion(completion: &str) -> &str {
    let end = STOP_SEQUENCES
        .iter()
        .filter_map(|s| completion.find(s))
        .min()
        .unwrap_or(completion.len());
    &completion[..end]
}

/// The program that checks a completion: prompt, completion, tests, `check(entry_point)`.
pub fn program(task: &HumanEvalTask, completion: &str) -> String {
    format!(
        "{}{}\n\n{}\n\ncheck({})\n",
        task.prompt,
        truncate_completion(completion),
        task.test,
        task.entry_point
    )
}

/// How a program ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status 0.
    Passed,
    /// Another exit status (a failed assertion, an error).
    Failed,
    /// Still running at the wall-time limit; killed.
    TimedOut,
    /// Stopped by the sandbox for this event (a socket, a process, a write outside).
    Forbidden(String),
}

/// Exit status of a program stopped by the audit hook.
const FORBIDDEN_EXIT: i32 = 86;

/// Runs before the program: installs the audit hook, then executes the program file.
const GUARD: &str = r#"
import os, sys
ROOT = os.path.realpath(os.getcwd())
_exit = os._exit
_write = os.write
_real = os.path.realpath
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
DENY = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
        "socket.sendto", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn",
        "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg", "pty.spawn",
        "ctypes.dlopen", "ctypes.dlsym", "os.startfile"}
PATHS = {"os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.chmod", "os.chown",
         "os.truncate", "os.link", "os.symlink", "os.utime", "shutil.rmtree",
         "shutil.copyfile", "shutil.move", "os.chdir", "os.chroot"}
def _inside(p):
    if isinstance(p, int):
        return True
    try:
        q = _real(os.path.join(ROOT, os.fsdecode(p)))
    except Exception:
        return False
    return q == ROOT or q.startswith(ROOT + os.sep)
def _stop(event):
    try:
        _write(2, ("sandbox: forbidden " + event + "\n").encode())
    finally:
        _exit(86)
def _hook(event, args):
    if event in DENY:
        _stop(event)
    elif event == "open":
        path, mode, flags = (tuple(args) + (None, None, 0))[:3]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
            (isinstance(flags, int) and flags & WRITE)
        if writing and path is not None and not _inside(path):
            _stop(event)
    elif event in PATHS:
        for a in args:
            if isinstance(a, (str, bytes, os.PathLike)) and not _inside(a):
                _stop(event)
src = open(sys.argv[1], encoding="utf-8").read()
code = compile(src, "program.py", "exec")
sys.addaudithook(_hook)
del sys.argv[:]
exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
"#;

/// A fresh folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "sweep-humaneval-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path)?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where and how long programs run.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// Wall-time limit per program.
    pub timeout: Duration,
    /// RLIMIT_CPU, seconds.
    pub cpu_seconds: u64,
    /// RLIMIT_AS, bytes.
    pub memory_bytes: u64,
    /// Whether to run under `unshare -rn` (no network); see [`Sandbox::detect`].
    pub unshare: bool,
}

impl Sandbox {
    /// Limits of 10 s wall time, 10 s CPU and 2 GiB address space, with `unshare -rn` when it
    /// works here.
    pub fn detect() -> Sandbox {
        let mut s = Sandbox {
            timeout: Duration::from_secs(10),
            cpu_seconds: 10,
            memory_bytes: 2 << 30,
            unshare: true,
        };
        s.unshare = matches!(s.run("pass\n"), Ok(Outcome::Passed));
        s
    }

    /// Run a Python program in a fresh temp dir under the limits.
    pub fn run(&self, program: &str) -> Result<Outcome, MetricsError> {
        let io =
            |what: &str, e: std::io::Error| MetricsError::Model(format!("sandbox {what}: {e}"));
        let dir = TempDir::new().map_err(|e| io("temp dir", e))?;
        std::fs::write(dir.path().join("program.py"), program).map_err(|e| io("write", e))?;
        std::fs::write(dir.path().join("guard.py"), GUARD).map_err(|e| io("write", e))?;
        let python = ["python3", "-I", "-B", "guard.py", "program.py"];
        let mut cmd = if self.unshare {
            let mut c = Command::new("unshare");
            c.args(["-rn", "--"]).args(python);
            c
        } else {
            let mut c = Command::new(python[0]);
            c.args(&python[1..]);
            c
        };
        cmd.current_dir(dir.path())
            .env_clear()
            .env("HOME", dir.path())
            .env("TMPDIR", dir.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // A file, not a pipe: a program that writes much cannot block on a full pipe.
            .stderr(
                std::fs::File::create(dir.path().join("stderr.txt")).map_err(|e| io("write", e))?,
            );
        let limits = (self.cpu_seconds, self.memory_bytes);
        // SAFETY: between fork and exec only async-signal-safe calls (setsid, setrlimit).
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                let set = |res, v: u64| {
                    let lim = libc::rlimit {
                        rlim_cur: v as libc::rlim_t,
                        rlim_max: v as libc::rlim_t,
                    };
                    if libc::setrlimit(res, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                };
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                set(libc::RLIMIT_CPU, limits.0)?;
                set(libc::RLIMIT_AS, limits.1)?;
                set(libc::RLIMIT_FSIZE, 16 << 20)?;
                set(libc::RLIMIT_NPROC, 0)?;
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| io("spawn", e))?;
        let started = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().map_err(|e| io("wait", e))? {
                break Some(st);
            }
            if started.elapsed() >= self.timeout {
                // The child leads its own process group: end it and anything it started.
                // SAFETY: kill(2) on the group of a child this function spawned.
                unsafe {
                    libc::kill(-(child.id() as i32), libc::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let Some(status) = status else {
            return Ok(Outcome::TimedOut);
        };
        let err = std::fs::read(dir.path().join("stderr.txt")).unwrap_or_default();
        let err = String::from_utf8_lossy(&err);
        Ok(match status.code() {
            Some(0) => Outcome::Passed,
            Some(FORBIDDEN_EXIT) => Outcome::Forbidden(
                err.lines()
                    .rev()
                    .find_map(|l| l.strip_prefix("sandbox: forbidden "))
                    .unwrap_or("?")
                    .to_string(),
            ),
            _ => Outcome::Failed,
        })
    }
}

/// The default HumanEval file under the data folder (what scripts/setup-data fetches).
pub fn default_path(data_dir: &Path) -> PathBuf {
    data_dir.join("humaneval").join("HumanEval.jsonl.gz")
}

/// pass@1 of one greedy completion per task (None for no tasks).
pub fn humaneval_pass_at_1(
    tasks: &[HumanEvalTask],
    model: &mut dyn TextModel,
    sandbox: &Sandbox,
) -> Result<Option<f64>, MetricsError> {
    if tasks.is_empty() {
        return Ok(None);
    }
    let mut sum = 0.0;
    let prompts: Vec<&str> = tasks.iter().map(|t| t.prompt.as_str()).collect();
    for (t, completion) in tasks.iter().zip(model.completions(&prompts, &DECODING)?) {
        model.check_stop()?;
        let passed = u64::from(sandbox.run(&program(t, &completion))? == Outcome::Passed);
        sum += pass_at_k(1, passed, 1).unwrap_or(0.0);
    }
    Ok(Some(sum / tasks.len() as f64))
}

/// pass@k for each k in `ks` (k <= n) from `n` samples per task at `temperature` (task t's
/// drawn from generators seeded by `seed` and t: [`TextModel::samples`]), with the unbiased
/// estimator 1 - C(n - c, k) / C(n, k) per task, averaged over tasks (None for no tasks or
/// n = 0).
pub fn humaneval_pass_at_k_sampled(
    tasks: &[HumanEvalTask],
    n: u64,
    temperature: f64,
    ks: &[u64],
    seed: u64,
    model: &mut dyn TextModel,
    sandbox: &Sandbox,
) -> Result<Option<Vec<(u64, f64)>>, MetricsError> {
    if tasks.is_empty() || n == 0 {
        return Ok(None);
    }
    let how = Completion {
        temperature,
        ..DECODING
    };
    let ks: Vec<u64> = ks.iter().copied().filter(|&k| k >= 1 && k <= n).collect();
    let mut sums = vec![0.0; ks.len()];
    for (i, t) in tasks.iter().enumerate() {
        let task_seed = crate::rng::Rng::new(seed, i as u64).next_u64();
        let mut passed = 0u64;
        for completion in model.samples(&t.prompt, n as usize, &how, task_seed)? {
            model.check_stop()?;
            passed += u64::from(sandbox.run(&program(t, &completion))? == Outcome::Passed);
        }
        for (sum, &k) in sums.iter_mut().zip(&ks) {
            *sum += pass_at_k(n, passed, k).unwrap_or(0.0);
        }
    }
    let m = tasks.len() as f64;
    Ok(Some(
        ks.into_iter().zip(sums).map(|(k, s)| (k, s / m)).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) {
        let a = a.unwrap();
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn hand_values() {
        // pass@1 is c / n.
        close(pass_at_k(10, 3, 1), 0.3);
        // n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10.
        close(pass_at_k(5, 2, 2), 0.7);
        // n=4, c=1, k=3: 1 - C(3,3)/C(4,3) = 1 - 1/4.
        close(pass_at_k(4, 1, 3), 0.75);
        close(pass_at_k(5, 0, 2), 0.0);
        close(pass_at_k(5, 4, 2), 1.0);
        close(pass_at_k(1, 1, 1), 1.0);
        assert_eq!(pass_at_k(3, 1, 4), None);
        assert_eq!(pass_at_k(3, 1, 0), None);
        assert_eq!(pass_at_k(3, 4, 1), None);
    }

    fn task() -> HumanEvalTask {
        HumanEvalTask {
            task_id: "t/0".into(),
            prompt: "def add(a, b):\n    \"\"\"Sum.\"\"\"\n".into(),
            entry_point: "add".into(),
            test: "def check(candidate):\n    assert candidate(1, 2) == 3\n".into(),
        }
    }

    fn sandbox() -> Sandbox {
        let mut s = Sandbox::detect();
        s.timeout = Duration::from_secs(2);
        s
    }

    fn run(body: &str) -> Outcome {
        sandbox().run(&program(&task(), body)).unwrap()
    }

    #[test]
    fn programs_join_prompt_completion_and_tests() {
        assert_eq!(
            truncate_completion("    return 1\ndef g():\n"),
            "    return 1"
        );
        assert_eq!(
            truncate_completion("    return 1\n    # ok\n"),
            "    return 1\n    # ok\n"
        );
        let p = program(&task(), "    return a + b\nprint('x')");
        assert!(
            p.ends_with("assert candidate(1, 2) == 3\n\n\ncheck(add)\n"),
            "{p}"
        );
        assert!(!p.contains("print"));
        let text =
            r#"{"task_id":"a","prompt":"p","entry_point":"f","test":"t","canonical_solution":"x"}"#;
        assert_eq!(parse_tasks(text, Path::new("h")).unwrap().len(), 1);
        let err = parse_tasks(&format!("{text}\n{{\"task_id\":1}}"), Path::new("h.jsonl"));
        assert!(err.unwrap_err().to_string().starts_with("h.jsonl:2:"));
    }

    #[test]
    fn right_and_wrong_completions() {
        assert_eq!(run("    return a + b\n"), Outcome::Passed);
        assert_eq!(run("    return a - b\n"), Outcome::Failed);
        assert_eq!(run("    return (\n"), Outcome::Failed);
        // Much output does not block the program.
        assert_eq!(
            run("    import sys\n    sys.stderr.write('x' * 1000000)\n    return a + b\n"),
            Outcome::Passed
        );
        // Writing inside its own folder is allowed.
        assert_eq!(
            run("    open('scratch.txt', 'w').write('x')\n    return a + b\n"),
            Outcome::Passed
        );
    }

    #[test]
    fn hanging_code_times_out() {
        let mut s = sandbox();
        s.timeout = Duration::from_millis(700);
        let t0 = Instant::now();
        let out = s
            .run(&program(&task(), "    while True:\n        pass\n"))
            .unwrap();
        assert_eq!(out, Outcome::TimedOut);
        assert!(t0.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn escapes_fail_even_when_the_error_is_caught() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("escaped.txt");
        let write = format!(
            "    try:\n        open({:?}, 'w').write('x')\n    except BaseException:\n        pass\n    return a + b\n",
            target.display().to_string()
        );
        assert!(matches!(run(&write), Outcome::Forbidden(e) if e == "open"));
        assert!(!target.exists());
        let up = "    open('../escaped.txt', 'a')\n    return a + b\n";
        assert!(matches!(run(up), Outcome::Forbidden(_)));
        let sock = "    import socket\n    try:\n        socket.socket().connect(('127.0.0.1', 9))\n    except BaseException:\n        pass\n    return a + b\n";
        assert!(matches!(run(sock), Outcome::Forbidden(e) if e.starts_with("socket")));
        let proc_ = "    import os\n    try:\n        os.system('true')\n    except BaseException:\n        pass\n    return a + b\n";
        assert!(matches!(run(proc_), Outcome::Forbidden(e) if e == "os.system"));
        let rm = format!(
            "    import os\n    os.remove({:?})\n    return a + b\n",
            outside.path().display().to_string()
        );
        assert!(matches!(run(&rm), Outcome::Forbidden(_)));
        assert!(outside.path().exists());
    }

    /// Completes every prompt with the same body.
    struct Body(&'static str);

    impl TextModel for Body {
        fn complete(&mut self, _: &str, how: &Completion) -> Result<String, MetricsError> {
            assert_eq!(how.stop, StopRule::FunctionEnd);
            Ok(self.0.to_string())
        }
        fn loglikelihood(&mut self, _: &str, _: &str) -> Result<f64, MetricsError> {
            unreachable!()
        }
    }

    #[test]
    fn pass_at_1_is_the_share_of_tasks_passed() {
        let mut sub = task();
        sub.entry_point = "sub".into();
        sub.prompt = "def sub(a, b):\n".into();
        sub.test = "def check(candidate):\n    assert candidate(3, 2) == 1\n".into();
        let tasks = [task(), sub];
        let s = sandbox();
        let got = humaneval_pass_at_1(&tasks, &mut Body("    return a + b\n"), &s).unwrap();
        assert_eq!(got, Some(0.5));
    }

    /// Completions in turn, recording the temperature asked for.
    struct Cycle(Vec<&'static str>, usize, Vec<f64>);

    impl TextModel for Cycle {
        fn complete(&mut self, _: &str, how: &Completion) -> Result<String, MetricsError> {
            self.2.push(how.temperature);
            self.1 += 1;
            Ok(self.0[(self.1 - 1) % self.0.len()].to_string())
        }
        fn loglikelihood(&mut self, _: &str, _: &str) -> Result<f64, MetricsError> {
            unreachable!()
        }
    }

    /// n samples per task at the temperature asked for, scored by the unbiased estimator: one
    /// right of every two gives pass@1 = 0.5 and, with n = 4, pass@2 = 1 - C(2,2)/C(4,2) = 5/6;
    /// k above n is left out.
    #[test]
    fn sampled_pass_at_k_uses_the_unbiased_estimator() {
        let s = sandbox();
        let mut m = Cycle(vec!["    return a + b\n", "    return a - b\n"], 0, vec![]);
        let got = humaneval_pass_at_k_sampled(&[task()], 4, 0.8, &[1, 2, 10], 0, &mut m, &s)
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], (1, 0.5));
        assert_eq!(got[1].0, 2);
        assert!((got[1].1 - 5.0 / 6.0).abs() < 1e-12, "{got:?}");
        assert_eq!(m.2, vec![0.8; 4]);
        assert!(
            humaneval_pass_at_k_sampled(&[task()], 0, 0.8, &[1], 0, &mut m, &s)
                .unwrap()
                .is_none()
        );
    }

    /// The real tasks' canonical solutions pass in the sandbox and an empty body fails: the
    /// sandbox does not fail honest code. About a minute (`cargo test -- --skip slow_` leaves
    /// it out); skipped with a message when HumanEval is absent, and failed then under
    /// SWEEP_TESTS_REQUIRE_SETUP=1 (set by scripts/test, which fetches it).
    #[test]
    fn slow_humaneval_canonical_solutions_pass() {
        let path = default_path(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data"));
        if !crate::util::setup_file_present(&path) {
            return;
        }
        let tasks = read_tasks(&path).unwrap();
        assert_eq!(tasks.len(), 164);
        let solutions: Vec<String> = std::process::Command::new("python3")
            .args([
                "-c",
                "import gzip,json,sys\nfor l in gzip.open(sys.argv[1]):\n print(json.dumps(json.loads(l)['canonical_solution']))",
            ])
            .arg(&path)
            .output()
            .map(|o| String::from_utf8(o.stdout).unwrap())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let s = Sandbox::detect();
        let failed: Vec<&str> = tasks
            .iter()
            .zip(&solutions)
            .filter(|(t, sol)| s.run(&program(t, sol)).unwrap() != Outcome::Passed)
            .map(|(t, _)| t.task_id.as_str())
            .collect();
        assert!(failed.is_empty(), "{failed:?}");
        assert_ne!(
            s.run(&program(&tasks[0], "    pass\n")).unwrap(),
            Outcome::Passed
        );
    }
}
