//! sockpassd: the socket broker daemon.

fn main() {
    std::process::exit(sockpassd::daemon::main(
        std::env::args_os().skip(1).collect(),
    ));
}
