//! Compile a C test program against include/lockfn.h and the cdylib cargo built: shared by
//! tests/c_abi.rs and tests/c_fork.rs (`#[path = "c/build.rs"] mod cbuild;`).

use std::path::{Path, PathBuf};

/// The directory of liblockfn.so: the test binary lives in target/<profile>/deps, the cdylib
/// one level up.
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

pub fn build(src: &str, out: &Path, extra: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let compiler = cc::Build::new()
        .cargo_metadata(false)
        .opt_level(0)
        .target("x86_64-unknown-linux-gnu")
        .host("x86_64-unknown-linux-gnu")
        .get_compiler();
    let mut cmd = compiler.to_command();
    let built = lib_dir().join("liblockfn.so");
    assert!(
        built.exists(),
        "liblockfn.so not built: {}",
        built.display()
    );
    // The program asks for the soname, liblockfn.so.0: give it one beside the program.
    let lib = out.parent().unwrap().to_path_buf();
    let link = lib.join("liblockfn.so.0");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&built, &link).unwrap();
    let dev = lib.join("liblockfn.so");
    let _ = std::fs::remove_file(&dev);
    std::os::unix::fs::symlink(&built, &dev).unwrap();
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g"])
        .arg("-I")
        .arg(root.join("include"))
        .arg(root.join(src))
        .arg("-o")
        .arg(out)
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-llockfn")
        .args(extra);
    let st = cmd.status().expect("run the C compiler");
    assert!(st.success(), "compiling {src} failed");
}
