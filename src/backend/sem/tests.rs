//! Unit tests of the sem rooms (what the integration tests in tests/sem_api.rs cannot reach).

use super::*;
use std::path::Path;

fn name(tag: &str) -> String {
    format!("unit-{tag}-{}", std::process::id())
}

fn target(n: &str) -> Target {
    Target::parse(&format!("sem:{n}")).unwrap()
}

fn cleanup(n: &str) {
    let _ = std::fs::remove_file(table::table_path(n));
    let _ = std::fs::remove_file(posix::sem_path(n));
}

#[test]
fn the_pool_never_hands_out_another_process_pairs() {
    let n = name("pool");
    let (pid, _) = own_process();
    let opened = |pid| {
        let mut p = Pair::open(&target(&n), 0o600, 1).unwrap();
        p.pid = pid;
        p
    };
    // As a forked child finds its parent's entries: another pid.
    pool::put(opened(pid + 1));
    assert!(pool::take(&n, pid).is_none());
    assert!(pool::take(&n, pid + 1).is_none(), "dropped, not kept");
    pool::put(opened(pid));
    assert!(pool::take(&n, pid).is_some());
    assert!(pool::take(&n, pid).is_none(), "taken out while in use");
    cleanup(&n);
}

#[test]
fn a_table_is_created_whole_and_its_slots_hold_the_record() {
    let n = name("table");
    let t = Table::create(&n, 0o600, 3).unwrap().unwrap();
    assert!(Table::create(&n, 0o600, 3).unwrap().is_none(), "exists");
    let (t2, _) = Table::open(&n).unwrap().unwrap();
    let g = t.lock().unwrap();
    assert_eq!((g.limit(), g.used(), g.sem_ino()), (3, 0, 0));
    let long = "x".repeat(400);
    let who = NewHolder {
        pid: 42,
        start_time: 7,
        text: Some(long.as_str()),
        persist: true,
    };
    let (i, rec) = g.claim(&who).unwrap();
    assert!(rec.token >= 1 && rec.holder.len() == crate::holder::MAX_HOLDER_TEXT);
    assert!(g.holds(i, rec.token));
    drop(g);
    // The other mapping sees the same record.
    let g2 = t2.lock().unwrap();
    let hs = g2.holders();
    assert_eq!(hs.len(), 1);
    assert_eq!(
        (hs[0].1.pid, hs[0].1.start_time, hs[0].1.persist),
        (42, 7, true)
    );
    assert_eq!(hs[0].1.token, rec.token);
    assert_eq!(g2.next_token(), rec.token + 1);
    drop(g2);
    cleanup(&n);
}

#[test]
fn planted_files_are_refused_before_mapping() {
    let n = name("planted");
    let p = posix::sem_path(&n);
    // Empty, too big, a directory, a symlink: errors naming the path, never a mapping.
    std::fs::write(&p, b"").unwrap();
    let e = Sem::open(&n).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Invalid);
    assert!(e.message().contains(&p.display().to_string()), "{e}");
    assert!(e.message().contains("0 bytes"), "{e}");
    std::fs::remove_file(&p).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &p).unwrap();
    assert_eq!(Sem::open(&n).err().unwrap().kind(), ErrorKind::Permission);
    std::fs::remove_file(&p).unwrap();
    std::fs::create_dir(&p).unwrap();
    assert!(Sem::open(&n).is_err());
    std::fs::remove_dir(&p).unwrap();
    let tp = table::table_path(&n);
    std::fs::write(&tp, vec![b' '; 600]).unwrap();
    let e = Table::open(&n).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Invalid);
    assert!(e.message().contains("not a lockfn holder table"), "{e}");
    assert!(!Path::new(&p).exists());
    cleanup(&n);
}
