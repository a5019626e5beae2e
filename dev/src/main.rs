//! The `iace-dev` binary: the whole dev world in one command (see `iace-dev --help`).

use clap::Parser;
use iace::config::LogFormat;
use iace_dev::DevArgs;

/// The IACE dev world: local Postgres and Redis (scripts/services up), migrations, the server
/// with the real vendor clients against the wire-level fakes, a demo agent answering
/// +14155550123, a demo outbound call and a demo inbound call.
#[derive(Debug, Parser)]
#[command(name = "iace-dev", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, env = "IACE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// The dev world's settings.
    #[command(flatten)]
    dev: DevArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let _telemetry = iace::telemetry::init(cli.log_format)?;
        iace_dev::run(cli.dev).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
