//! The zookeeper backend (not implemented yet: every call says so).

use super::{not_implemented, Backend, GcScope, Held, Status, Wait};
use crate::{Options, Result, Service, Target};

pub struct ZkBackend;

impl Backend for ZkBackend {
    fn acquire(&self, _: &Target, _: &Options, _: &Wait) -> Result<Box<dyn Held>> {
        Err(not_implemented(Service::Zk))
    }
    fn status(&self, _: &Target) -> Result<Status> {
        Err(not_implemented(Service::Zk))
    }
    fn list(&self, _: &Target) -> Result<Vec<Status>> {
        Err(not_implemented(Service::Zk))
    }
    fn gc(&self, _: &GcScope) -> Result<u32> {
        Err(not_implemented(Service::Zk))
    }
    fn release_named(&self, _: &Target, _: bool) -> Result<u32> {
        Err(not_implemented(Service::Zk))
    }
    fn update_named(&self, _: &Target) -> Result<()> {
        Err(not_implemented(Service::Zk))
    }
}
