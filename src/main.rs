//! The `sweep` binary: parse the command line, run the command, and turn errors into exit codes.

use clap::Parser;

fn main() {
    // Die quietly on a closed pipe (`sweep status | head`), as command-line tools do.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match sweep::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; clap's usage errors exit 2.
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    if let Err(err) = sweep::commands::run(cli) {
        if let Some(answer) = err.downcast_ref::<sweep::commands::Answer>() {
            std::process::exit(answer.0);
        }
        eprintln!("error: {err:#}");
        std::process::exit(sweep::commands::exit_code(&err));
    }
}
