//! lockfn(1) and the bash completion, generated from the clap definitions (`Cli` in main.rs)
//! with clap_mangen and clap_complete, and committed as `doc/lockfn.1` and
//! `doc/lockfn.bash-completion` (installed by `make install` and the Debian package), like
//! include/lockfn.h. This test fails when they are stale:
//!
//!   LOCKFN_BLESS=1 cargo test --bin lockfn docgen      # rewrites them
//!
//! It exists only under `cfg(test)`: the CLI itself does not change.

use clap::CommandFactory;
use std::path::PathBuf;

/// A help text as written: indented lines (tables, examples) kept as they are (no-fill), prose
/// lines filled, blank lines as paragraph breaks.
fn help_text(text: &str) -> String {
    let mut out = String::new();
    let mut nofill = false;
    for line in text.lines() {
        let indented = line.starts_with(' ');
        if line.trim().is_empty() {
            if nofill {
                out.push_str(".fi\n");
                nofill = false;
            }
            out.push_str(".PP\n");
            continue;
        }
        if indented && !nofill {
            out.push_str(".nf\n");
            nofill = true;
        } else if !indented && nofill {
            out.push_str(".fi\n");
            nofill = false;
        }
        out.push_str(&para(line));
    }
    if nofill {
        out.push_str(".fi\n");
    }
    out
}

/// Filled roman text (one paragraph).
fn para(text: &str) -> String {
    let esc = text.replace('\\', "\\e").replace('-', "\\-");
    let mut out = String::new();
    for line in esc.lines() {
        if line.starts_with('.') || line.starts_with('\'') {
            out.push_str("\\&");
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn render(f: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
    let mut buf = Vec::new();
    f(&mut buf).expect("render to memory");
    String::from_utf8(buf).expect("utf-8 roff")
}

const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "LOCKFN_BACKEND",
        "the service of a bare NAME target: sem, pmxcfs, zk or consul",
    ),
    (
        "LOCKFN_PMXCFS_DIR",
        "the pmxcfs lock directory (default /etc/pve/priv/lock)",
    ),
    (
        "ZKHOSTS",
        "ZooKeeper hosts of zk:NAME targets (default 127.0.0.1:2181)",
    ),
    (
        "LOCKFN_ZK_AUTH",
        "user:password for ZooKeeper digest authentication",
    ),
    (
        "CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE",
        "the Consul agent and its ACL token, as Consul's own tools read them",
    ),
    (
        "LOCKFN_PROGRESS_INTERVAL",
        "time between -v's lines on whom a wait waits for (default 5 s; 0.05 s to 10 s); \
         a test and tuning knob",
    ),
    (
        "LOCKFN_OP_TIMEOUT",
        "bound of status, list, gc, release and update, and of each remote request, in \
         seconds (default 5; 0.1 to 3600)",
    ),
    (
        "LOCKFN_TOKEN, LOCKFN_TARGET",
        "set by lockfn run for the command: the fencing token and the target",
    ),
];

/// lockfn(1): one page with every subcommand, so that `man lockfn` answers everything.
fn man_page() -> String {
    let mut cmd = super::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let version = cmd.get_version().unwrap_or_default().to_string();
    let man = clap_mangen::Man::new(cmd.clone())
        .date("")
        .source(format!("lockfn {version}"))
        .manual("User Commands");
    let mut page = String::new();
    page.push_str(".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n");
    page.push_str(&render(|w| man.render_title(w)));
    page.push_str(&render(|w| man.render_name_section(w)));
    page.push_str(&render(|w| man.render_synopsis_section(w)));
    page.push_str(".SH DESCRIPTION\n");
    page.push_str(&para(
        "Run things that must not run twice at once. A TARGET string names a lock on one \
         of four services (see TARGETS); every subcommand below takes one. Results go to \
         stdout, logs to stderr.",
    ));
    page.push_str(&render(|w| man.render_options_section(w)));
    page.push_str(".SH COMMANDS\n");
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        page.push_str(&format!(".SS \"lockfn {}\"\n", sub.get_name()));
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            page.push_str(&para(&about.to_string()));
        }
        let sman = clap_mangen::Man::new(sub.clone());
        let synopsis = render(|w| sman.render_synopsis_section(w));
        page.push_str(&synopsis.replacen(".SH SYNOPSIS\n", ".PP\n", 1));
        let options = render(|w| sman.render_options_section(w));
        page.push_str(&options.replace(".SH OPTIONS\n", ".PP\n"));
        if let Some(after) = sub.get_after_long_help().or_else(|| sub.get_after_help()) {
            page.push_str(".PP\n");
            page.push_str(&help_text(&after.to_string()));
        }
    }
    // The top-level after-help is "Targets:" then "Exit codes:": two sections of the page.
    let after = cmd
        .get_after_help()
        .map(|s| s.to_string())
        .unwrap_or_default();
    let (targets, codes) = after.split_once("\nExit codes:\n").unwrap_or((&after, ""));
    page.push_str(".SH TARGETS\n");
    page.push_str(&help_text(
        targets.trim_start_matches("Targets:\n").trim_end(),
    ));
    let (codes, notes) = codes.split_once("\nNotes:\n").unwrap_or((codes, ""));
    if !codes.is_empty() {
        page.push_str(".SH \"EXIT STATUS\"\n");
        page.push_str(&help_text(codes.trim_end()));
    }
    if !notes.is_empty() {
        page.push_str(".SH NOTES\n");
        page.push_str(&help_text(notes.trim_end()));
    }
    page.push_str(".SH ENVIRONMENT\n");
    for (name, text) in ENVIRONMENT {
        page.push_str(&format!(".TP\n.B {}\n", name.replace('-', "\\-")));
        page.push_str(&para(text));
    }
    page.push_str(".SH FILES\n.TP\n.B lockfn.sh\n");
    page.push_str(&para(
        "the bash helper, installed beside lockfn: `source lockfn.sh` (bash finds it on \
         PATH), then lock_acquire TARGET, lock_release TARGET, with_lock TARGET CMD.",
    ));
    page.push_str(".SH \"SEE ALSO\"\n");
    page.push_str(&para(
        "flock(1), Lockfn(3pm) (Perl), the Python package lockfn, <lockfn.h> and \
         liblockfn (C), /usr/share/doc/lockfn/README.md.gz",
    ));
    page.push_str(&render(|w| man.render_version_section(w)));
    page
}

fn completion() -> String {
    let mut cmd = super::Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "lockfn", &mut buf);
    String::from_utf8(buf).expect("utf-8 completion")
}

#[test]
fn docgen_man_page_and_completion_are_current() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bless = std::env::var_os("LOCKFN_BLESS").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (rel, text) in [
        ("doc/lockfn.1", man_page()),
        ("doc/lockfn.bash-completion", completion()),
    ] {
        let path = root.join(rel);
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(rel);
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} differ from the clap definitions: run LOCKFN_BLESS=1 cargo test --bin lockfn docgen"
    );
}
