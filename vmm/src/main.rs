use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use vmm::config::{CliFailure, Launch};

/// One line for a command-line syntax error: clap's first line, or for a missing option the
/// option's name (clap's first line alone would not say which).
fn clap_error_line(e: &clap::Error) -> String {
    if e.kind() == ErrorKind::MissingRequiredArgument {
        if let Some(ContextValue::Strings(args)) = e.get(ContextKind::InvalidArg) {
            return format!("missing required option {}", args.join(", "));
        }
    }
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("invalid command line");
    first.trim_start_matches("error: ").to_string()
}

fn main() -> ExitCode {
    // Stop signals are taken only where the monitor checks for them (between setup steps, then
    // by the event loop), so that every way out cleans up after the run.
    if let Err(e) = vmm::events::block_stop_signals() {
        eprintln!("vmm: cannot block signals: {e}");
        return ExitCode::from(vmm::exit::FAILURE);
    }
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,vmm=info,devices=info"),
    )
    .format_timestamp_millis()
    .init();
    let launch = match Launch::parse_args(std::env::args_os()) {
        Ok(launch) => launch,
        Err(CliFailure::Clap(e)) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(CliFailure::Clap(e)) => {
            eprintln!("vmm: {} (see vmm --help)", clap_error_line(&e));
            return ExitCode::from(vmm::exit::USAGE);
        }
        Err(CliFailure::Config(e)) => {
            eprintln!("vmm: {e}");
            return ExitCode::from(vmm::exit::USAGE);
        }
    };
    match vmm::launch(launch) {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("vmm: {e}");
            ExitCode::from(e.exit_status())
        }
    }
}
