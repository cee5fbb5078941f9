//! sockpassd: the socket broker daemon.

fn main() {
    let code = sockpassd::daemon::main(std::env::args_os().skip(1).collect());
    // Lines still queued for the logger thread would be lost by exit.
    sockpass_broker::log::flush(std::time::Duration::from_millis(500));
    std::process::exit(code);
}
