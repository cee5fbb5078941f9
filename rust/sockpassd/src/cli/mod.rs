//! `sockpass`: the command-line tool. One module a subcommand, each with its
//! clap definition (`command()`) and what it does (`run()`); the help, the
//! man pages and the shell completions all come from these definitions.

use clap::{Arg, ArgAction, ArgMatches, Command};
use std::ffi::OsString;
use std::path::PathBuf;

pub mod accept;
pub mod exit;
pub mod generate;
pub mod json;
pub mod pickup;
pub mod request;
pub mod reserve;
pub mod restart;
pub mod run;
pub mod serve_in;
pub mod status;
pub mod supervise;
pub mod upgrade;

/// What every command's `--help` and the man pages end with.
pub const BROKER_PATH_HELP: &str = "The broker socket is --socket PATH, else $SOCKPASS_SOCKET, \
else the path sockpassd uses by default (/run/sockpass/sockpassd.sock as root, \
$XDG_RUNTIME_DIR/sockpass/sockpassd.sock otherwise).";

/// The whole `sockpass` command line.
pub fn command() -> Command {
    documented_command().subcommand(generate::command())
}

/// The command line less the hidden `__generate` (which completions would
/// otherwise offer).
pub fn documented_command() -> Command {
    Command::new("sockpass")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Get sockets from the sockpass broker, and start programs with them")
        .long_about(
            "Get sockets from the sockpass broker (sockpassd), reserve them for other \
             processes, hand them to programs by systemd socket activation, and show what the \
             broker holds.",
        )
        .after_help(format!("{BROKER_PATH_HELP}\n\n{}", exit::HELP))
        .subcommand_required(true)
        .arg_required_else_help(true)
        // Every command's help ends with the exit codes (run and serve-in
        // say more first).
        .subcommands(
            [
                status::command(),
                request::command(),
                reserve::command(),
                pickup::command(),
                upgrade::command(),
            ]
            .map(|c| c.after_help(exit::HELP)),
        )
        .subcommand(run::command())
        .subcommand(restart::command().after_help(exit::HELP))
        .subcommand(serve_in::command())
        .subcommand(
            Command::new("version")
                .about("Print the version")
                .hide(true),
        )
}

/// `--socket PATH`: the broker to talk to.
pub fn socket_arg() -> Arg {
    Arg::new("socket")
        .long("socket")
        .value_name("PATH")
        .value_parser(clap::value_parser!(PathBuf))
        .help("The broker's socket (default: $SOCKPASS_SOCKET, else sockpassd's default path)")
}

/// `--share MODE` and `--app NAME`, as a request names them.
pub fn share_args() -> [Arg; 2] {
    [
        Arg::new("share")
            .long("share")
            .value_name("MODE")
            .value_parser(|s: &str| s.parse::<sockpass::ShareMode>().map_err(|e| e.to_string()))
            .help("Who else may get the same socket: none, sameapp (the same uid and --app) or any (docs/POLICY.md)"),
        Arg::new("app")
            .long("app")
            .value_name("NAME")
            .default_value("")
            .hide_default_value(true)
            .help("The application name share mode sameapp compares"),
    ]
}

/// A flag (`--x`, no value).
pub fn flag(name: &'static str, help: &'static str) -> Arg {
    Arg::new(name)
        .long(name)
        .action(ArgAction::SetTrue)
        .help(help)
}

/// `PROGRAM [ARGS...]`: the program to start, from the first argument that
/// is not an option (or after `--`); everything after it is its own.
pub fn program_arg(help: &'static str) -> Arg {
    Arg::new("program")
        .value_name("PROGRAM")
        .required(true)
        .num_args(1..)
        .trailing_var_arg(true)
        .value_parser(clap::value_parser!(OsString))
        .help(help)
}

/// Socket specs as positional arguments (`SPEC...`).
pub fn specs_arg(help: &'static str) -> Arg {
    Arg::new("spec")
        .value_name("SPEC")
        .num_args(1..)
        .required(true)
        .value_parser(parse_spec)
        .help(help)
}

pub fn parse_spec(s: &str) -> Result<sockpass::SocketSpec, String> {
    s.parse::<sockpass::SocketSpec>().map_err(|e| e.to_string())
}

/// A connection to the broker a command's `--socket` names, or else to the
/// default one: `$SOCKPASS_SOCKET`, or (not root) the per-user path and then
/// the system path, as every client looks for it.
pub fn connect_broker(m: &ArgMatches) -> sockpass::Result<sockpass::Client> {
    match m.get_one::<PathBuf>("socket") {
        Some(p) => sockpass::Client::connect(p),
        None => sockpass::Client::connect_default(),
    }
}

pub fn share(m: &ArgMatches) -> sockpass::ShareMode {
    m.get_one("share")
        .copied()
        .unwrap_or(sockpass::ShareMode::None)
}

pub fn app(m: &ArgMatches) -> &str {
    m.get_one::<String>("app").map_or("", String::as_str)
}

pub fn main(args: Vec<OsString>) -> i32 {
    let m = match command().try_get_matches_from(std::iter::once("sockpass".into()).chain(args)) {
        Ok(m) => m,
        // Help and version print to stdout and exit 0, usage errors 2.
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    let (name, sub) = m.subcommand().expect("a subcommand is required");
    let res = match name {
        "status" => status::run(sub),
        "request" => request::run(sub),
        "reserve" => reserve::run(sub),
        "pickup" => pickup::run(sub),
        "run" => run::run(sub),
        "restart" => restart::run(sub),
        "serve-in" => serve_in::run(sub),
        "upgrade" => upgrade::run(sub),
        "version" => {
            println!("sockpass {}", env!("CARGO_PKG_VERSION"));
            Ok(exit::OK)
        }
        generate::NAME => generate::run(sub),
        _ => unreachable!("clap knows every subcommand"),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sockpass: {e}");
            exit::USAGE
        }
    }
}

/// Report a library error and pick the exit code ([`exit::for_error`]).
pub fn fail(what: &str, e: &sockpass::Error) -> i32 {
    eprintln!("sockpass: {what}: {e}");
    exit::for_error(e)
}

/// Hold what was taken until stdin reaches EOF (or the process is killed).
pub fn hold_until_stdin_closes() {
    use std::io::Read;
    let mut sink = [0u8; 256];
    let mut stdin = std::io::stdin();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
}
