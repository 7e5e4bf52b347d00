//! Habits users bring from other lock tools, caught before they do something else than meant:
//! flock(1)'s shape without a subcommand (`lockfn -n X cmd`) gets the `run` form as a hint,
//! and `consul lock -n 3` (a limit there, try-once here) is refused or warned about.

use clap::CommandFactory;
use std::ffi::OsString;

/// What to do about a `-n NUMBER`.
#[derive(Debug, PartialEq)]
pub enum Habit {
    /// Go on, with this warning on stderr.
    Warn(String),
    /// Exit 64 with this message: the call cannot be what was meant.
    Refuse(String),
}

/// Service prefixes of targets (a word starting so is a target, not a command).
const SCHEMES: &[&str] = &["sem:", "pmxcfs:", "zk:", "zookeeper:", "consul:", "file:"];

fn looks_like_target(word: &str) -> bool {
    SCHEMES.iter().any(|s| word.starts_with(s))
}

fn is_number(word: &str) -> bool {
    !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit())
}

/// `-n`, `--nonblock`, `--no-wait`, or short flags ending in n (`-vn`).
fn is_nonblock(word: &str) -> bool {
    matches!(word, "--nonblock" | "--no-wait")
        || (word.len() >= 2
            && word.starts_with('-')
            && !word.starts_with("--")
            && word.ends_with('n')
            && word[1..].bytes().all(|b| matches!(b, b'v' | b'q' | b'n')))
}

/// Does this option word of `sub` take the next word as its value?
fn takes_next(sub: &clap::Command, word: &str) -> bool {
    let takes = |a: &clap::Arg| a.get_action().takes_values();
    if let Some(long) = word.strip_prefix("--") {
        if long.contains('=') {
            return false;
        }
        return sub.get_arguments().any(|a| {
            (a.get_long() == Some(long) || a.get_all_aliases().is_some_and(|v| v.contains(&long)))
                && takes(a)
        });
    }
    // A short cluster: the first short that takes a value ends it, taking the rest of the
    // word, or the next word when it is last.
    let chars: Vec<char> = word.chars().skip(1).collect();
    for (i, c) in chars.iter().enumerate() {
        if sub
            .get_arguments()
            .any(|a| a.get_short() == Some(*c) && takes(a))
        {
            return i + 1 == chars.len();
        }
    }
    false
}

/// `lockfn run -n 3 …`: `consul lock -n 3` means a limit of 3; here -n is try-once and 3 the
/// target. Refused when the words after the number show that the target was meant to come
/// next (`run -n 3 sem:x -- cmd` would run `sem:x` as the command; `hold -n 3 sem:x` has a
/// word too many); warned about otherwise (`run -n 3 -- cmd` locks a lock named 3).
pub fn limit_number(args: &[OsString]) -> Option<Habit> {
    let words: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // The common case costs no walk over clap's definitions.
    if !words
        .windows(2)
        .any(|w| is_nonblock(&w[0]) && is_number(&w[1]))
    {
        return None;
    }
    let cli = crate::Cli::command();
    let mut sub: Option<&clap::Command> = None;
    let mut i = 1;
    while i < words.len() {
        let w = words[i].as_str();
        if w == "--" {
            return None;
        }
        if w.starts_with('-') && w.len() > 1 {
            if let Some(sc) = sub {
                let number = words.get(i + 1).map(String::as_str).unwrap_or("");
                if is_nonblock(w) && is_number(number) {
                    return Some(judge(sc.get_name(), w, number, &words[i + 2..]));
                }
                if takes_next(sc, w) {
                    i += 1;
                }
            }
        } else if sub.is_none() {
            sub = Some(cli.find_subcommand(w)?);
            if !sub?.get_arguments().any(|a| a.get_id() == "nonblock") {
                return None;
            }
        } else {
            return None; // the target came without a -n NUMBER before it
        }
        i += 1;
    }
    None
}

fn judge(sub: &str, flag: &str, number: &str, after: &[String]) -> Habit {
    let next = after.first().filter(|w| !w.starts_with('-'));
    let meant_target = match next {
        Some(w) if looks_like_target(w) => true,
        Some(_) if sub != "run" => true,
        // `run -n 3 WORD … -- cmd`: WORD would be the command's first word.
        Some(_) => after.iter().skip(1).any(|w| w == "--"),
        None => false,
    };
    let limit =
        format!("for {number} holders at once use --limit {number} (and -n as well to try once)");
    if meant_target {
        let target = next.map(String::as_str).unwrap_or("TARGET");
        let shown = if sub == "run" {
            "the command"
        } else {
            "a word too many"
        };
        Habit::Refuse(format!(
            "{flag} {number}: {flag} is try-once (flock's -n) and takes no number, so \
             '{number}' would be the lock's name and '{target}' {shown}; {limit}: lockfn \
             {sub} --limit {number} {target}{}",
            if sub == "run" { " -- COMMAND" } else { "" }
        ))
    } else {
        Habit::Warn(format!(
            "{flag} is try-once (flock's -n), so '{number}' is taken as the lock's name; {limit}"
        ))
    }
}

/// Global flags that may come before the subcommand.
fn is_global(word: &str) -> bool {
    matches!(word, "--verbose" | "--quiet")
        || (word.len() >= 2
            && word.starts_with('-')
            && !word.starts_with("--")
            && word[1..].bytes().all(|b| matches!(b, b'v' | b'q')))
}

/// A word for a shell command line, quoted when it needs to be.
fn quoted(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:=@%+,-".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// The target a flock(1) user meant: a path becomes `file:PATH` where this lockfn has that
/// service, anything else stays as written.
fn flock_target(word: &str) -> String {
    if word.contains('/') && !looks_like_target(word) && !word.contains("://") {
        let file = format!("file:{word}");
        if lockfn::Target::parse(&file).is_ok() {
            return file;
        }
    }
    word.to_string()
}

/// A call in flock(1)'s shape (`lockfn [-n] [-w S] X cmd…`, no subcommand): the same call in
/// the `run` form, for a hint under clap's error. None for anything else (a mistyped
/// subcommand gets clap's own suggestion).
pub fn flock_hint(args: &[OsString], e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidSubcommand | ErrorKind::UnknownArgument
    ) || e.get(ContextKind::SuggestedSubcommand).is_some()
    {
        return None;
    }
    let words: Vec<String> = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .filter(|w| !is_global(w))
        .collect();
    let cli = crate::Cli::command();
    if words
        .first()
        .is_none_or(|w| w == "help" || cli.find_subcommand(w).is_some())
    {
        return None;
    }
    let mut out = vec!["lockfn".to_string(), "run".to_string()];
    let mut it = words.iter().map(String::as_str).peekable();
    // flock(1)'s options, up to its file (its getopt stops at the first non-option).
    while let Some(w) = it.next_if(|w| w.starts_with('-') && w.len() > 1) {
        let (opt, attached) = match w.split_once('=') {
            Some((o, v)) if o.starts_with("--") => (o, Some(v.to_string())),
            _ if !w.starts_with("--") && w.len() > 2 => (&w[..2], Some(w[2..].to_string())),
            _ => (w, None),
        };
        let mut value = || attached.clone().or_else(|| it.next().map(str::to_string));
        match opt {
            "-n" | "--nonblock" | "--nb" | "--no-wait" if attached.is_none() => {
                out.push("-n".into())
            }
            "-s" | "--shared" if attached.is_none() => out.push("--shared".into()),
            // Exclusive is the default; closing the lock fd and not forking have no meaning
            // for a lock that is not a file descriptor of the command.
            "-x" | "-e" | "--exclusive" | "-o" | "--close" | "-F" | "--no-fork"
                if attached.is_none() => {}
            "-w" | "--wait" | "--timeout" => {
                out.push("-w".into());
                out.push(value()?);
            }
            "-E" | "--conflict-exit-code" => {
                out.push("-E".into());
                out.push(value()?);
            }
            _ => return None,
        }
    }
    out.push(
        it.next()
            .map(flock_target)
            .unwrap_or_else(|| "TARGET".into()),
    );
    let rest: Vec<&str> = it.collect();
    match rest.as_slice() {
        [c, cmd, ..] if *c == "-c" || *c == "--command" => {
            out.push("-c".into());
            out.push(cmd.to_string());
        }
        [] => {
            out.push("--".into());
            out.push("COMMAND".into());
        }
        cmd => {
            out.push("--".into());
            out.extend(cmd.iter().map(|s| s.to_string()));
        }
    }
    let line: Vec<String> = out.iter().map(|w| quoted(w)).collect();
    Some(format!(
        "lockfn takes a subcommand first; to run a command under a lock (flock(1)'s \
         form): {}",
        line.join(" ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<OsString> {
        std::iter::once("lockfn")
            .chain(line.split(' '))
            .map(OsString::from)
            .collect()
    }

    fn hint(line: &str) -> Option<String> {
        use clap::Parser;
        let a = args(line);
        let e = crate::Cli::try_parse_from(&a).err().expect("a parse error");
        flock_hint(&a, &e)
    }

    #[test]
    fn flock_shapes_get_the_run_form() {
        for (call, want) in [
            ("-n sem:x true", "lockfn run -n sem:x -- true"),
            ("sem:x echo hi", "lockfn run sem:x -- echo hi"),
            ("-w 5 sem:x cmd", "lockfn run -w 5 sem:x -- cmd"),
            ("-w5 -E 3 sem:x cmd", "lockfn run -w 5 -E 3 sem:x -- cmd"),
            (
                "--timeout=2 -s sem:x cmd",
                "lockfn run -w 2 --shared sem:x -- cmd",
            ),
            ("-v -x sem:x -c a;b", "lockfn run sem:x -c 'a;b'"),
            ("mylock", "lockfn run mylock -- COMMAND"),
        ] {
            let h = hint(call).unwrap_or_else(|| panic!("no hint for {call}"));
            assert!(h.ends_with(want), "{call}: {h}");
        }
    }

    #[test]
    fn other_errors_get_no_flock_hint() {
        for call in [
            "stauts sem:x",
            "run",
            "status",
            "--bogus",
            "run --bogus sem:x -- true",
        ] {
            assert_eq!(hint(call), None, "{call}");
        }
    }

    #[test]
    fn n_with_a_number() {
        let refuse = |l: &str| matches!(limit_number(&args(l)), Some(Habit::Refuse(_)));
        let warn = |l: &str| matches!(limit_number(&args(l)), Some(Habit::Warn(_)));
        assert!(refuse("run -n 3 sem:x -- cmd"));
        assert!(refuse("run -w 5 -n 3 consul:x -- cmd"));
        assert!(refuse("run -n 3 mylock -- cmd"));
        assert!(refuse("-v hold --nonblock 3 sem:x"));
        assert!(refuse("acquire --persist -vn 3 zk:x"));
        assert!(warn("run -n 3 -- cmd"));
        assert!(warn("run -n 3 cmd"));
        assert!(warn("hold -n 3"));
        for fine in [
            "run -n sem:3 -- cmd",
            "run --limit 3 -n sem:x -- cmd",
            "run -w 3 sem:x -- cmd",
            "run sem:x -- cmd -n 3",
            "run sem:x cmd -n 3",
            "run --holder -n sem:x -- cmd",
            "status 3",
            "release -n 3",
        ] {
            assert_eq!(limit_number(&args(fine)), None, "{fine}");
        }
    }
}
