//! prom-gendoc: writes the man pages and shell completions of the Debian packages into a
//! directory (scripts/package.sh): prom-daemon and promctl (package prom-daemon), and
//! prom-bridge (package prom-bridge), each package's files in its own subdirectory.
//!
//! Everything comes from the definitions the binaries themselves use: the clap commands
//! (`promctl`, `prom-daemon`, `prom-bridge`) and the commented example configurations
//! (`prom_daemon::config::example()`, packaging/prom-daemon.toml;
//! `prom_bridge::config::example()`, packaging/prom-bridge.toml), so the pages cannot drift
//! from the programs.
//!
//! Output layout (the paths scripts/package.sh and the cargo-deb assets expect):
//!   prom-daemon/man/prom-daemon.8  promctl.1  promctl-<subcommand>.1  prom-daemon.toml.5
//!   prom-daemon/completions/{bash/promctl,zsh/_promctl,fish/promctl.fish} (and prom-daemon)
//!   prom-bridge/man/prom-bridge.1  prom-bridge.toml.5
//!   prom-bridge/completions/{bash/prom-bridge,zsh/_prom-bridge,fish/prom-bridge.fish}

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;

const USAGE: &str = "usage: prom-gendoc OUTDIR";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match generate(Path::new(&out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prom-gendoc: {e}");
            ExitCode::FAILURE
        }
    }
}

fn generate(out: &Path) -> io::Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    daemon_package(&out.join("prom-daemon"), &format!("prom-daemon {version}"))?;
    bridge_package(&out.join("prom-bridge"), &format!("prom-bridge {version}"))
}

fn daemon_package(out: &Path, source: &str) -> io::Result<()> {
    let man = out.join("man");
    fs::create_dir_all(&man)?;
    let source = source.to_owned();

    // prom-daemon(8): a daemon, so section 8.
    let daemon = prom_daemon::daemon::Args::command();
    write_page(&man, daemon.clone(), "8", &source, |w| {
        files_section(w)?;
        see_also(w, &["promctl(1)", "prom-daemon.toml(5)", "systemctl(1)", "journalctl(1)"])
    })?;

    // promctl(1) lists its subcommands as promctl-NAME(1) (clap_mangen's SUBCOMMANDS section);
    // each gets its own page. `help` is clap's, with nothing to document.
    let mut promctl = prom_daemon::cli::Cli::command().disable_help_subcommand(true);
    promctl.build();
    let subs: Vec<clap::Command> =
        promctl.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
    write_page(&man, promctl.clone(), "1", &source, |w| {
        see_also(w, &["prom-daemon(8)", "prom-daemon.toml(5)"])
    })?;
    for sub in subs {
        write_page(&man, sub, "1", &source, |w| see_also(w, &["promctl(1)", "prom-daemon(8)"]))?;
    }

    let page = ConfigPage {
        program: "prom-daemon",
        example: prom_daemon::config::example(),
        see_also: &["prom-daemon(8)", "promctl(1)"],
    };
    fs::write(man.join("prom-daemon.toml.5"), page.render(&source))?;
    completions(out, &[prom_daemon::cli::Cli::command(), prom_daemon::daemon::Args::command()])
}

fn bridge_package(out: &Path, source: &str) -> io::Result<()> {
    let man = out.join("man");
    fs::create_dir_all(&man)?;
    let bridge = prom_bridge::cli::Cli::command();
    write_page(&man, bridge.clone(), "1", source, |w| {
        writeln!(w, ".SH FILES")?;
        for (path, what) in [
            (prom_bridge::config::DEFAULT_PATH, "the configuration, see prom-bridge.toml(5)"),
            ("/usr/share/doc/prom-bridge/BRIDGE.md", "topics, payloads and metrics"),
        ] {
            writeln!(w, ".TP\n{}\n{}", esc(path), esc(what))?;
        }
        see_also(w, &["prom-bridge.toml(5)", "prom-daemon(8)", "promctl(1)", "mosquitto_sub(1)"])
    })?;
    let page = ConfigPage {
        program: "prom-bridge",
        example: prom_bridge::config::example(),
        see_also: &["prom-bridge(1)", "prom-daemon(8)"],
    };
    fs::write(man.join("prom-bridge.toml.5"), page.render(source))?;
    completions(out, &[bridge])
}

/// bash, zsh and fish completions of `commands` under OUT/completions/<shell>/.
fn completions(out: &Path, commands: &[clap::Command]) -> io::Result<()> {
    for (shell, dir, file) in
        [(Shell::Bash, "bash", "{}"), (Shell::Zsh, "zsh", "_{}"), (Shell::Fish, "fish", "{}.fish")]
    {
        let dir = out.join("completions").join(dir);
        fs::create_dir_all(&dir)?;
        for cmd in commands {
            let name = cmd.get_name().to_owned();
            let path = dir.join(file.replace("{}", &name));
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), &name, &mut buf);
            fs::write(&path, buf)?;
        }
    }
    Ok(())
}

/// Renders `cmd` with clap_mangen's sections, then `extra` (FILES, SEE ALSO).
fn write_page(
    dir: &Path,
    cmd: clap::Command,
    section: &str,
    source: &str,
    extra: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
) -> io::Result<PathBuf> {
    let man = Man::new(cmd).section(section).source(source).manual("prom-daemon");
    let mut page = Vec::new();
    man.render(&mut page)?;
    extra(&mut page)?;
    let path = dir.join(man.get_filename());
    fs::write(&path, page)?;
    Ok(path)
}

fn files_section(w: &mut Vec<u8>) -> io::Result<()> {
    writeln!(w, ".SH FILES")?;
    for (path, what) in [
        ("/etc/prom/prom-daemon.toml", "the configuration, see prom-daemon.toml(5)"),
        (prom_daemon::config::DEFAULT_MODEL_PATH, "the model used when none is configured"),
        (
            "/usr/share/dbus-1/system.d/io.prom.Classifier1.conf",
            "who may call what on the system bus",
        ),
        ("/usr/share/dbus-1/interfaces/io.prom.Classifier1.xml", "the D-Bus interface"),
    ] {
        writeln!(w, ".TP\n{}\n{}", esc(path), esc(what))?;
    }
    Ok(())
}

fn see_also(w: &mut Vec<u8>, pages: &[&str]) -> io::Result<()> {
    let refs: Vec<String> = pages
        .iter()
        .map(|p| {
            let (name, sec) = p.split_once('(').expect("page(section)");
            format!(".BR {} ({}", esc(name), sec)
        })
        .collect();
    writeln!(w, ".SH \"SEE ALSO\"")?;
    // All but the last reference end in a comma.
    for (i, r) in refs.iter().enumerate() {
        let comma = if i + 1 < refs.len() { "," } else { "" };
        writeln!(w, "{r}{comma}")?;
    }
    Ok(())
}

/// Escapes text for a roff line: backslashes, hyphens (so they stay ASCII minus signs in
/// paths and flags) and a leading control character.
fn esc(text: &str) -> String {
    let mut s = text.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        s.insert_str(0, "\\&");
    }
    s
}

/// PROGRAM.toml(5) of a program with a commented example configuration.
struct ConfigPage {
    program: &'static str,
    example: &'static str,
    see_also: &'static [&'static str],
}

impl ConfigPage {
    /// The page, derived from the commented example configuration: its leading
    /// comment block is the DESCRIPTION; each later block becomes an entry headed by the setting
    /// it documents (`key = value` or the commented `#key = value` default), with its comment as
    /// the text; `[[camera]]`/`[camera.x]` headers and the `# ----` banners become
    /// subsections; the commented-out example cameras are shown as they are. Comment text keeps
    /// its line breaks (no-fill), as the example aligns lists and values in columns.
    fn render(&self, source: &str) -> String {
        let (program, example) = (esc(self.program), self.example);
        let mut out = String::new();
        out.push_str(&format!(
            ".TH {}.TOML 5 \"\" \"{}\" \"prom-daemon\"\n",
            program.to_uppercase(),
            esc(source)
        ));
        out.push_str(&format!(".SH NAME\n{program}.toml \\- configuration of {program}\n"));
        out.push_str(&format!(".SH SYNOPSIS\n/etc/prom/{program}.toml\n"));

        let blocks: Vec<Vec<&str>> = example
            .split("\n\n")
            .map(|b| b.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>())
            .filter(|b| !b.is_empty())
            .collect();
        let mut blocks = blocks.into_iter();
        if let Some(header) = blocks.next() {
            out.push_str(".SH DESCRIPTION\n.nf\n");
            for l in header {
                push_text(&mut out, comment_text(l).unwrap_or(l));
            }
            out.push_str(".fi\n");
        }
        out.push_str(".SH SETTINGS\n");
        for block in blocks {
            if block[0].starts_with("# ---") {
                // A banner: "# ----", text, "# ----".
                let text: Vec<&str> = block
                    .iter()
                    .filter(|l| !l.starts_with("# ---"))
                    .map(|l| comment_text(l).unwrap_or(l))
                    .collect();
                if let Some((first, rest)) = text.split_first() {
                    // The banner's first sentence names the subsection; the rest is text.
                    let (title, tail) = first.split_once(": ").unwrap_or((first, ""));
                    out.push_str(&format!(".SS \"{}\"\n.nf\n", esc(title.trim_end_matches(':'))));
                    if !tail.is_empty() {
                        push_text(&mut out, tail);
                    }
                    for l in rest {
                        push_text(&mut out, l);
                    }
                    out.push_str(".fi\n");
                }
                continue;
            }
            let mut text = Vec::new();
            let mut settings = Vec::new();
            for l in &block {
                if l.starts_with('[') {
                    // A table header opens a subsection for the keys that follow it.
                    out.push_str(&format!(".SS \"{}\"\n", esc(l)));
                } else if let Some(t) = comment_text(l) {
                    text.push(t);
                } else {
                    settings.push(l.strip_prefix('#').unwrap_or(l));
                }
            }
            if settings.is_empty() {
                out.push_str(".PP\n.nf\n");
            } else {
                out.push_str(".TP\n");
                let tags: Vec<String> =
                    settings.iter().map(|s| format!("\\fB{}\\fR", esc(s))).collect();
                out.push_str(&tags.join("\n.br\n"));
                out.push_str("\n.nf\n");
            }
            for t in text {
                push_text(&mut out, t);
            }
            out.push_str(".fi\n");
        }
        out.push_str(&format!(".SH FILES\n.TP\n/etc/prom/{program}.toml\n"));
        out.push_str("The configuration file; the package installs this commented example.\n");
        let mut tail = Vec::new();
        see_also(&mut tail, self.see_also).expect("writing to a Vec");
        out.push_str(&String::from_utf8(tail).expect("roff is UTF-8"));
        out
    }
}

/// A no-fill text line; an empty one as `.sp`, as blank input lines are not portable roff.
fn push_text(out: &mut String, text: &str) {
    if text.is_empty() {
        out.push_str(".sp\n");
    } else {
        out.push_str(&esc(text));
        out.push('\n');
    }
}

/// The text of a comment line ("# text" or a bare "#"); `None` for a setting, including a
/// commented-out default such as `#threads = "auto"` (no space after the `#`).
fn comment_text(line: &str) -> Option<&str> {
    if line == "#" {
        Some("")
    } else {
        line.strip_prefix("# ")
    }
}
