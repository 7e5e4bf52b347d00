// The shared library carries the soname liblockfn.so.0 so that installed programs link against
// the ABI major version, not the unversioned development symlink.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,liblockfn.so.0");
    println!("cargo:rerun-if-changed=build.rs");
}
