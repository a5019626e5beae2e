//! Tests of the command line: its definitions are well formed, and `.env.sample` is rendered
//! from them.

use super::*;
use clap::CommandFactory;

/// Clap checks its definitions only when a command is built: a clash (two flattened
/// groups with a field of the same name) would panic the binary at start-up.
#[test]
fn the_command_line_is_well_formed_and_learning_is_on_by_default() {
    Cli::command().debug_assert();
    let cli = Cli::try_parse_from([
        "iace",
        "serve",
        "--redis-url",
        "redis://127.0.0.1:1",
        "--database-url",
        "postgres://x@127.0.0.1/x",
    ])
    .unwrap();
    let Command::Serve(args) = cli.command else {
        panic!("serve");
    };
    assert!(args.learning.enabled);
    assert!(!args.voice.enabled);
    assert_eq!(args.learning.memory_half_life_days, 90);
}

/// Set to regenerate `.env.sample` from the definitions instead of comparing with it.
const REGENERATE: &str = "IACE_WRITE_ENV_SAMPLE";

/// `.env.sample` is the rendering of the definitions above: a setting added, renamed or
/// documented differently without regenerating it fails here (and so in CI).
#[test]
fn the_env_sample_lists_every_setting_as_defined() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/.env.sample");
    let rendered = env_sample();
    if std::env::var_os(REGENERATE).is_some() {
        std::fs::write(path, &rendered).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    let first_difference = checked_in
        .lines()
        .zip(rendered.lines())
        .position(|(a, b)| a != b)
        .unwrap_or(checked_in.lines().count().min(rendered.lines().count()));
    assert!(
        checked_in == rendered,
        ".env.sample does not match the settings in src/config.rs (first difference at line {}); \
         regenerate it with `{REGENERATE}=1 cargo test -p iace --lib config::` and commit it",
        first_difference + 1
    );
}

/// One setting read from the environment.
struct Setting {
    env: String,
    help: String,
    default: Option<String>,
    secret: bool,
    required: bool,
    /// Other commands that read it with another default: (command, default).
    other_defaults: Vec<(String, String)>,
}

/// Every `env` argument, global ones first, then each command's in the order `--help` lists
/// them; a variable that several commands read appears once, with the first one's default.
fn settings() -> Vec<Setting> {
    fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<Setting>) {
        for arg in cmd.get_arguments() {
            let Some(env) = arg.get_env() else { continue };
            let env = env.to_string_lossy().into_owned();
            let default = Some(
                arg.get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .filter(|d| !d.is_empty());
            if let Some(seen) = out.iter_mut().find(|s| s.env == env) {
                if seen.default != default {
                    let other = default.unwrap_or_else(|| "none".into());
                    seen.other_defaults.push((path.to_owned(), other));
                }
                continue;
            }
            out.push(Setting {
                env,
                help: arg.get_help().map(|h| h.to_string()).unwrap_or_default(),
                default,
                secret: arg.is_hide_env_values_set(),
                required: arg.is_required_set(),
                other_defaults: Vec::new(),
            });
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }
    let mut out = Vec::new();
    walk(&Cli::command(), "iace", &mut out);
    out
}

/// Lines of at most 100 columns, each starting with `# `.
fn comment(text: &str) -> String {
    let mut out = String::new();
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > 100 && line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// The text of `.env.sample`.
fn env_sample() -> String {
    let mut out = comment(&format!(
        "Every setting of iace, rendered from src/config.rs: do not edit by hand, regenerate with \
         `{REGENERATE}=1 cargo test -p iace --lib config::`. Export what you need (or keep it in \
         .env, which git ignores); each line shows the default, commented out; secrets are left \
         empty. `scripts/services env` prints DATABASE_URL and REDIS_URL for the local services."
    ));
    for s in settings() {
        let mut help = s.help.trim().to_owned();
        // Clap drops the summary's closing period.
        if !help.ends_with('.') {
            help.push('.');
        }
        if s.required {
            help.push_str(" Required.");
        }
        if s.secret {
            help.push_str(" Secret.");
        }
        for (command, default) in &s.other_defaults {
            help.push_str(&format!(" Default for `{command}`: {default}."));
        }
        out.push('\n');
        out.push_str(&comment(&help));
        let value = if s.secret {
            String::new()
        } else {
            s.default.unwrap_or_default()
        };
        out.push_str(&format!("# {}={value}\n", s.env));
    }
    out.push('\n');
    out.push_str(&comment(
        "Read by the logging and tracing libraries rather than a flag: the log filter \
         (tracing's EnvFilter syntax), and where OTLP/HTTP traces go (unset: none are exported).",
    ));
    out.push_str("# RUST_LOG=info,sqlx=warn\n# OTEL_EXPORTER_OTLP_ENDPOINT=\n");
    out
}
