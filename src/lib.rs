//! lockfn: one lock API over POSIX semaphores, pmxcfs, ZooKeeper and Consul.
//!
//! ```no_run
//! use lockfn::{Lock, Options, Target};
//! let target = Target::parse("sem:backup").unwrap();
//! let mut opts = Options::default();
//! opts.timeout = Some(std::time::Duration::from_secs(10));
//! let lock = Lock::acquire(&target, &opts).unwrap();
//! println!("token {}", lock.token());
//! lock.release().unwrap();
//! ```
//!
//! The layout: `target.rs` splits a target's scheme from its name, `service.rs` is the
//! registry of services, `backend/` holds the trait every service implements and one folder
//! per service. [`Lock`] (lock.rs) adds what every service shares on top of that trait;
//! admin.rs answers questions by name (status, list, gc). The C ABI (ffi.rs) and the CLI are
//! thin shells around this crate.

mod admin;
pub(crate) mod backend;
mod error;
pub mod ffi;
mod fork;
pub mod holder;
mod lock;
mod options;
mod proc;
mod service;
pub mod target;

pub use admin::{
    gc, list, persistent_lifetime, release_matching, release_named, status, update_named,
};
pub use backend::{HolderView, Lifetime, Status};
pub use error::{Error, ErrorKind, Result};
pub use holder::HolderRecord;
pub use lock::Lock;
pub(crate) use lock::{held_table, HeldTable};
pub use options::Options;
pub use service::Service;
pub use target::Target;

/// Request counters for tests and benches (feature `test-counters`; not part of the API).
#[cfg(feature = "test-counters")]
#[doc(hidden)]
pub mod testing {
    pub use crate::backend::zookeeper::{counters, Counters};
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
