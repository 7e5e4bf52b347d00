//! A held sem: slot: its token checked in the table, its count posted back on release.

use super::pair::Pair;
use super::pool;
use super::Held;
use crate::holder::HolderRecord;
use crate::{Error, ErrorKind, Result, Target};
use std::time::Duration;

pub(super) struct SemHeld {
    pub target: Target,
    /// Given back to the pool by a successful release.
    pub pair: Option<Pair>,
    pub slot: usize,
    pub record: HolderRecord,
}

impl SemHeld {
    fn lost(&self) -> Error {
        Error::new(
            ErrorKind::Lost,
            format!(
                "{}: our slot (token {}) was taken away (forced release by an operator, or \
                 resourcelock's unget?)",
                self.target, self.record.token
            ),
        )
    }

    fn pair(&self) -> Result<&Pair> {
        self.pair.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::NotHeld,
                format!("{} is not held (already released)", self.target),
            )
        })
    }

    /// Is our slot still ours? Under the table's mutex, after taking back the slots a
    /// forced post gave away (table.rs): memory reads only.
    fn verify(&self) -> Result<()> {
        let pair = self.pair()?;
        let g = pair.table.lock()?;
        if !pair.current(&g) {
            return Err(self.lost());
        }
        g.reconcile(&pair.sem);
        if g.holds(self.slot, self.record.token) {
            Ok(())
        } else {
            Err(self.lost())
        }
    }
}

impl Held for SemHeld {
    fn token(&self) -> u64 {
        self.record.token
    }

    fn record(&self) -> &HolderRecord {
        &self.record
    }

    fn update(&mut self) -> Result<()> {
        self.verify()
    }

    /// A forced release (ours or resourcelock's unget) is the only way to lose a sem slot;
    /// noticing it costs no syscall.
    fn check_interval(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }

    fn release(&mut self) -> Result<()> {
        {
            let pair = self.pair()?;
            let g = pair.table.lock()?;
            if !pair.current(&g) {
                return Err(self.lost());
            }
            // Never post a count someone already gave back: then the slot is not ours.
            g.reconcile(&pair.sem);
            if !g.holds(self.slot, self.record.token) {
                return Err(self.lost());
            }
            g.free(self.slot);
            pair.sem
                .post()
                .map_err(|e| Error::os(format!("{}: sem_post", self.target), e))?;
        }
        if let Some(p) = self.pair.take() {
            pool::put(p);
        }
        Ok(())
    }
}
