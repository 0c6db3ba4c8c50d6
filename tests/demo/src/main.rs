//! `entra-sync-demo`: see the crate's documentation and the README.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "usage: entra-sync-demo [--with-proxy]\n\n  --with-proxy  also run LiteLLM's proxy on the demo's database (installed under target/ on\n                first use) and show the removed member's key refused through it";

fn main() -> ExitCode {
    let mut options = entra_sync_demo::Options::default();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--with-proxy" => options.with_proxy = true,
            "-h" | "--help" => {
                let _ = writeln!(std::io::stdout(), "{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("entra-sync-demo: unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    // The test harness panics with one clear sentence when PostgreSQL, Redis or pip is missing:
    // show the sentence, not a backtrace hint.
    std::panic::set_hook(Box::new(|info| {
        let message = info.payload_as_str().unwrap_or("unexpected failure");
        eprintln!("entra-sync-demo: {message}");
    }));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("entra-sync-demo: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(demo(options))
}

async fn demo(options: entra_sync_demo::Options) -> ExitCode {
    let started = Instant::now();
    let mut out = std::io::stdout();
    let stopped = if options.with_proxy {
        "Stopped the webhook, the worker and LiteLLM's proxy"
    } else {
        "Stopped the webhook and the worker"
    };
    let interrupted = tokio::spawn(tokio::signal::ctrl_c());
    let _ = writeln!(
        out,
        "Building the webhook, the worker and the migrations ..."
    );
    let binaries = match entra_sync_demo::binaries::build() {
        Ok(_) if interrupted.is_finished() => return ExitCode::from(130),
        Ok(binaries) => binaries,
        Err(_) if interrupted.is_finished() => return ExitCode::from(130),
        Err(error) => {
            eprintln!("entra-sync-demo: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let run_id = format!(
        "{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let logs = binaries.dir.join("entra-sync-demo-logs").join(&run_id);
    let result = tokio::select! {
        result = entra_sync_demo::run_with(&binaries, &run_id, &logs, &mut out, options) => Some(result),
        Ok(Ok(())) = interrupted => None,
    };
    // Here everything the demo started is stopped and everything it made is gone.
    let code = match result {
        Some(Ok(_)) => {
            let _ = writeln!(
                out,
                "\nDone in {:.0} s. {stopped}, dropped the database, deleted the streams.",
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Some(Err(error)) => {
            eprintln!("\nentra-sync-demo: {error:#}");
            if logs.is_dir() {
                eprintln!("The processes' logs are in {}", logs.display());
            }
            eprintln!("{stopped}, dropped the database, deleted the streams.");
            return ExitCode::FAILURE;
        }
        None => {
            let _ = writeln!(
                out,
                "\nInterrupted. {stopped}, dropped the database, deleted the streams."
            );
            ExitCode::from(130)
        }
    };
    let _ = std::fs::remove_dir_all(&logs);
    code
}
