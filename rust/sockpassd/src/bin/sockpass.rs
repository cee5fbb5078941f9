//! sockpass: the command-line tool.

fn main() {
    std::process::exit(sockpassd::cli::main(std::env::args_os().skip(1).collect()));
}
