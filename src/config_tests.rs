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
