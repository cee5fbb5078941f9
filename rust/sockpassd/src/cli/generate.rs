//! `sockpass __generate man|completions DIR` (hidden): write the man pages
//! (sockpass(1), sockpass-COMMAND(1), sockpassd(8)) or the bash, zsh and fish
//! completions of both programs into DIR, from the same clap definitions
//! the programs parse with. The build (meson) calls it.

use clap::{Arg, ArgMatches, Command};
use clap_complete::Shell;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const NAME: &str = "__generate";

pub fn command() -> Command {
    Command::new(NAME)
        .hide(true)
        .about("Write man pages or shell completions into DIR (for packaging)")
        .arg(
            Arg::new("what")
                .value_name("WHAT")
                .required(true)
                .value_parser(["man", "completions"]),
        )
        .arg(
            Arg::new("dir")
                .value_name("DIR")
                .required(true)
                .value_parser(clap::value_parser!(PathBuf)),
        )
}

pub fn run(m: &ArgMatches) -> Result<i32, String> {
    let dir = m.get_one::<PathBuf>("dir").expect("required");
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let res = match m.get_one::<String>("what").map(String::as_str) {
        Some("man") => man_pages(dir),
        _ => completions(dir),
    };
    res.map_err(|e| format!("{NAME}: {e}"))?;
    Ok(super::exit::OK)
}

fn completions(dir: &Path) -> std::io::Result<()> {
    for (mut cmd, name) in [
        (super::documented_command(), "sockpass"),
        (crate::daemon::command(), "sockpassd"),
    ] {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            clap_complete::generate_to(shell, &mut cmd, name, dir)?;
        }
    }
    Ok(())
}

/// Sections every page ends with besides clap's: exit status, environment,
/// see also.
fn man_pages(dir: &Path) -> std::io::Result<()> {
    let main = super::documented_command();
    let subs: Vec<String> = main
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_string())
        .collect();
    let see_also: Vec<String> = subs
        .iter()
        .map(|s| format!("sockpass-{s}(1)"))
        .chain(["sockpassd(8)".to_string()])
        .collect();
    write_page(dir, main.clone(), "1", "sockpass", &see_also)?;
    for name in &subs {
        let sub = main
            .find_subcommand(name)
            .expect("listed above")
            .clone()
            .name(format!("sockpass-{name}"))
            .bin_name(format!("sockpass {name}"));
        write_page(
            dir,
            sub,
            "1",
            &format!("sockpass-{name}"),
            &["sockpass(1)".into()],
        )?;
    }
    write_page(
        dir,
        crate::daemon::command(),
        "8",
        "sockpassd",
        &["sockpass(1)".into()],
    )
}

fn write_page(
    dir: &Path,
    cmd: Command,
    section: &str,
    name: &str,
    see_also: &[String],
) -> std::io::Result<()> {
    let daemon = section == "8";
    let man = clap_mangen::Man::new(cmd.clone())
        .section(section)
        .manual("sockpass")
        .source(format!("sockpass {}", env!("CARGO_PKG_VERSION")));
    let mut f = std::fs::File::create(dir.join(format!("{name}.{section}")))?;
    man.render_title(&mut f)?;
    man.render_name_section(&mut f)?;
    man.render_synopsis_section(&mut f)?;
    man.render_description_section(&mut f)?;
    man.render_options_section(&mut f)?;
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut f)?;
    }
    if let Some(extra) = cmd.get_after_long_help().or(cmd.get_after_help()) {
        // Our after-help text is "Heading:\n  lines" blocks (kept as they
        // are laid out) and headless paragraphs (filled).
        for block in extra.to_string().split("\n\n") {
            match block.split_once(":\n") {
                Some((head, body)) if !head.contains('\n') => {
                    writeln!(f, ".SH \"{}\"\n.nf", head.to_uppercase())?;
                    for line in body.lines() {
                        writeln!(f, "{}", roff_escape(line))?;
                    }
                    writeln!(f, ".fi")?;
                }
                _ => writeln!(f, ".SH NOTES\n{}", roff_escape(&block.replace('\n', " ")))?,
            }
        }
    }
    if !daemon {
        writeln!(f, ".SH ENVIRONMENT\n.TP\n.B SOCKPASS_SOCKET\nThe broker's socket when --socket is not given.")?;
    }
    writeln!(f, ".SH \"SEE ALSO\"\n{}", roff_escape(&see_also.join(", ")))?;
    Ok(())
}

/// Text as a roff line: backslashes doubled, a leading dot or quote guarded.
fn roff_escape(s: &str) -> String {
    let s = s.replace('\\', "\\\\").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}
