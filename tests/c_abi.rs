//! Builds tests/c/abi_test.c with the `cc` crate's compiler and -Wall -Wextra -Werror against
//! include/lockfn.h, links it to target/*/liblockfn.so, and runs it (also under valgrind when
//! installed: no invalid access, no definite leak).

use std::process::Command;

#[path = "c/build.rs"]
mod cbuild;
use cbuild::{build, lib_dir};

fn unique(tag: &str) -> String {
    format!("abi-{tag}-{}", std::process::id())
}

#[test]
fn c_program_exercises_the_abi() {
    let dir = std::env::temp_dir().join(format!("lockfn-c-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("abi_test");
    build("tests/c/abi_test.c", &exe, &[]);
    let out = Command::new(&exe).arg(unique("plain")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "abi_test failed");
    assert!(stdout.contains(" passed, 0 failed"));

    if Command::new("valgrind").arg("--version").output().is_ok() {
        let out = Command::new("valgrind")
            .args([
                "--error-exitcode=99",
                "--leak-check=full",
                "--errors-for-leak-kinds=definite",
                "--trace-children=no",
                "-q",
            ])
            .arg(&exe)
            .arg(unique("vg"))
            .output()
            .unwrap();
        eprintln!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "abi_test under valgrind: {:?}",
            out.status
        );
    } else if std::env::var_os("LOCKFN_TEST_REQUIRE_SERVERS").is_some() {
        panic!("valgrind is required by tests/run.sh but not installed");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn soname_is_versioned() {
    let so = lib_dir().join("liblockfn.so");
    let Ok(out) = Command::new("readelf").arg("-d").arg(&so).output() else {
        return; // binutils absent: the C build above would have failed anyway
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[liblockfn.so.0]"), "soname missing:\n{text}");
}
