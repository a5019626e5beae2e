//! The `iace` binary: see `iace --help`.

use clap::Parser;
use iace::config::{Cli, Command, OrgCommand, UserCommand};

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
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
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
        Command::Dev(args) => iace::app::dev(args).await,
    }
}
