//! This process's own argument area, as `ps` and /proc/PID/cmdline show it.

/// Overwrite the password of every `zk://user:password@…` argument of this process in place
/// (with `*`), so that `ps` and /proc/PID/cmdline no longer show it. For the CLI, after it
/// parsed its arguments; returns how many arguments were changed. Linux only (the argument
/// area's bounds come from /proc/self/stat); elsewhere, or when they cannot be read, a no-op.
pub fn hide_credentials() -> usize {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the command name (which may contain spaces): arg_start and arg_end are
    // fields 48 and 49, i.e. the 46th and 47th after the name.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (Some(Ok(start)), Some(Ok(end))) = (
        f.get(45).map(|x| x.parse::<usize>()),
        f.get(46).map(|x| x.parse::<usize>()),
    ) else {
        return 0;
    };
    if start == 0 || end <= start || end - start > (1 << 21) {
        return 0;
    }
    // SAFETY: [arg_start, arg_end) is this process's own argument area, mapped and writable
    // for its whole life; we only overwrite password bytes with '*' (no length change).
    let area = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, end - start) };
    let mut changed = 0;
    let mut i = 0;
    while i < area.len() {
        let len = area[i..]
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(area.len() - i);
        let arg = &mut area[i..i + len];
        if let Some(rest) = arg.strip_prefix(b"zk://") {
            let auth_end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
            if let Some(at) = rest[..auth_end].iter().rposition(|&b| b == b'@') {
                if let Some(colon) = rest[..at].iter().position(|&b| b == b':') {
                    let (from, to) = (5 + colon + 1, 5 + at);
                    if to > from {
                        arg[from..to].fill(b'*');
                        changed += 1;
                    }
                }
            }
        }
        i += len + 1;
    }
    changed
}
