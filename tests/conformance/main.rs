//! One conformance suite, run against every service: what DESIGN.md's "Semantics every
//! backend honours" promises, written once. Per-service files (tests/pmxcfs.rs, zk.rs,
//! consul.rs, sem_api.rs) keep only what is specific to their service.
//!
//! Services: `sem:` always; `pmxcfs:` on the FUSE emulator (tests/pmxcfs/emu.sh, root and
//! /dev/fuse); `zk:` with ZKHOSTS; `consul:` with CONSUL_HTTP_ADDR (tests/run.sh starts both);
//! `file:` always (flock on files in a temp dir).
//! A service whose server is missing is skipped, or fails under LOCKFN_TEST_REQUIRE_SERVERS=1.
//!
//! Adding a service: one `Svc` constructor in services.rs and one line in the `conformance!`
//! list below.

mod cases;
#[path = "../common/mod.rs"]
mod common;
mod services;

use services::Svc;

/// One `#[test]` per (service, case): `sem_exclusion`, `zk_limit_3`, …
macro_rules! conformance {
    ($($svc:ident),* ; $($case:ident),*) => {
        conformance!(@svc [$($svc),*] [$($case),*]);
    };
    (@svc [$($svc:ident),*] $cases:tt) => {
        $( conformance!(@case $svc $cases); )*
    };
    (@case $svc:ident [$($case:ident),*]) => {
        mod $svc {
            $(
                #[test]
                fn $case() {
                    if let Some(svc) = super::Svc::$svc() {
                        super::cases::$case(&svc);
                    }
                }
            )*
        }
    };
}

conformance!(sem, pmxcfs, zk, consul, file;
    exclusion, limit_3, shared, timeout, try_once, cancel_fd, kill9_recovery, lost_lock,
    tokens_grow, status_and_list_shape, persist_and_release, fork_gives_eforked,
    signal_cancels_a_waiting_run);
