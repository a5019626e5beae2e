//! The `iace` binary: see `iace --help`.

use clap::Parser;
use iace::config::{Cli, Command, OrgCommand, UserCommand};

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if is_dev_command(&e) {
                eprintln!(
                    "error: `iace dev` is now its own binary: run `cargo run -p iace-dev` from the \
                     repository root (e.g. `cargo run -p iace-dev -- --log-format text`)"
                );
                return std::process::ExitCode::from(2);
            }
            e.exit()
        }
    };
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
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The dev world left this binary (it runs the wire-level fakes, which the server never
/// carries); whoever still types `iace dev` is told where it went.
fn is_dev_command(e: &clap::Error) -> bool {
    e.kind() == clap::error::ErrorKind::InvalidSubcommand
        && matches!(
            e.get(clap::error::ContextKind::InvalidSubcommand),
            Some(clap::error::ContextValue::String(s)) if s == "dev"
        )
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let _telemetry = iace::telemetry::init(cli.log_format)?;
    match cli.command {
        Command::Serve(args) => iace::app::start(*args).await?.wait().await,
        Command::Migrate(db) => iace::app::migrate(&db.database_url).await,
        Command::Org {
            command: OrgCommand::Create { name, db },
        } => {
            let (org, key) = iace::app::create_org(&db.database_url, &name).await?;
            println!(
                "{}",
                serde_json::json!({"organization_id": org.id, "api_key": key})
            );
            Ok(())
        }
        Command::User {
            command:
                UserCommand::Create {
                    org,
                    email,
                    role,
                    password_stdin,
                    db,
                },
        } => {
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                Some(line.trim_end_matches(['\r', '\n']).to_owned())
            } else {
                None
            };
            let (user, generated) =
                iace::app::create_user(&db.database_url, org, &email, &role, password).await?;
            let mut out = serde_json::json!({
                "user_id": user.id,
                "organization_id": user.organization_id,
                "email": user.email,
                "role": user.role,
            });
            if let Some(p) = generated {
                out["password"] = serde_json::Value::String(p);
            }
            println!("{out}");
            Ok(())
        }
    }
}
