//! The ZooKeeper wire format ("jute"): big-endian integers, length-prefixed buffers and
//! strings, and the few records the lock recipes need; and the ACLs of the nodes we create.

/// Operation codes.
pub(crate) const OP_DELETE: i32 = 2;
pub(crate) const OP_EXISTS: i32 = 3;
pub(crate) const OP_GET_DATA: i32 = 4;
pub(crate) const OP_SET_DATA: i32 = 5;
pub(crate) const OP_GET_CHILDREN: i32 = 8;
pub(crate) const OP_PING: i32 = 11;
pub(crate) const OP_CREATE2: i32 = 15;
pub(crate) const OP_AUTH: i32 = 100;

/// Special xids.
pub(crate) const XID_NOTIFICATION: i32 = -1;
pub(crate) const XID_PING: i32 = -2;
pub(crate) const XID_AUTH: i32 = -4;

/// Error codes the recipes look at.
pub(crate) const ERR_NO_NODE: i32 = -101;
pub(crate) const ERR_NO_AUTH: i32 = -102;
pub(crate) const ERR_NODE_EXISTS: i32 = -110;
pub(crate) const ERR_NOT_EMPTY: i32 = -111;
pub(crate) const ERR_SESSION_EXPIRED: i32 = -112;
pub(crate) const ERR_INVALID_ACL: i32 = -114;
pub(crate) const ERR_AUTH_FAILED: i32 = -115;

/// Create modes.
pub(crate) const MODE_PERSISTENT: i32 = 0;
pub(crate) const MODE_EPHEMERAL: i32 = 1;
pub(crate) const MODE_PERSISTENT_SEQUENTIAL: i32 = 2;
pub(crate) const MODE_EPHEMERAL_SEQUENTIAL: i32 = 3;

/// Watch event types.
pub(crate) const EV_CREATED: i32 = 1;
pub(crate) const EV_DELETED: i32 = 2;
pub(crate) const EV_DATA_CHANGED: i32 = 3;
pub(crate) const EV_CHILDREN_CHANGED: i32 = 4;

pub(crate) const PERM_READ: i32 = 1;
pub(crate) const PERM_ALL: i32 = 31;

/// A human name for a server error code.
pub fn err_name(code: i32) -> &'static str {
    match code {
        -1 => "system error",
        -2 => "runtime inconsistency",
        -3 => "data inconsistency",
        -4 => "connection loss",
        -5 => "marshalling error",
        -6 => "unimplemented",
        -7 => "operation timeout",
        -8 => "bad arguments",
        -13 => "new config no quorum",
        -14 => "reconfig in progress",
        -100 => "API error",
        ERR_NO_NODE => "no node",
        ERR_NO_AUTH => "not authenticated (ACL denies it)",
        -103 => "bad version",
        -108 => "no children for ephemerals",
        ERR_NODE_EXISTS => "node exists",
        ERR_NOT_EMPTY => "not empty",
        ERR_SESSION_EXPIRED => "session expired",
        -113 => "invalid callback",
        ERR_INVALID_ACL => "invalid ACL",
        ERR_AUTH_FAILED => "authentication failed",
        -118 => "session moved",
        -119 => "not read-only",
        -120 => "ephemeral on local session",
        -121 => "no watcher",
        -122 => "request timeout",
        -123 => "reconfig disabled",
        -124 => "session closed: client requested",
        -125 => "quota exceeded",
        -127 => "throttled",
        _ => "unknown error",
    }
}

/// Encoder.
#[derive(Default)]
pub struct W(pub Vec<u8>);

impl W {
    pub fn new() -> W {
        W(Vec::with_capacity(64))
    }
    pub fn i32(&mut self, v: i32) -> &mut W {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut W {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn bool(&mut self, v: bool) -> &mut W {
        self.0.push(v as u8);
        self
    }
    pub fn buf(&mut self, b: &[u8]) -> &mut W {
        self.i32(b.len() as i32);
        self.0.extend_from_slice(b);
        self
    }
    pub fn str(&mut self, s: &str) -> &mut W {
        self.buf(s.as_bytes())
    }
    pub fn acls(&mut self, acls: &[Acl]) -> &mut W {
        self.i32(acls.len() as i32);
        for a in acls {
            self.i32(a.perms).str(&a.scheme).str(&a.id);
        }
        self
    }
}

/// Decoder over a reply body; every read is bounds-checked.
pub struct R<'a> {
    b: &'a [u8],
    p: usize,
}

#[derive(Debug)]
pub struct Short;

impl<'a> R<'a> {
    pub fn new(b: &'a [u8]) -> R<'a> {
        R { b, p: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Short> {
        let end = self.p.checked_add(n).ok_or(Short)?;
        if end > self.b.len() {
            return Err(Short);
        }
        let s = &self.b[self.p..end];
        self.p = end;
        Ok(s)
    }
    pub fn i32(&mut self) -> Result<i32, Short> {
        let s = self.take(4)?;
        Ok(i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    pub fn i64(&mut self) -> Result<i64, Short> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(i64::from_be_bytes(a))
    }
    /// A buffer; a null buffer (length -1) reads as empty.
    pub fn buf(&mut self) -> Result<Vec<u8>, Short> {
        let n = self.i32()?;
        if n < 0 {
            return Ok(Vec::new());
        }
        Ok(self.take(n as usize)?.to_vec())
    }
    pub fn string(&mut self) -> Result<String, Short> {
        Ok(String::from_utf8_lossy(&self.buf()?).into_owned())
    }
    pub fn strings(&mut self) -> Result<Vec<String>, Short> {
        let n = self.i32()?;
        let mut v = Vec::with_capacity(n.clamp(0, 100_000) as usize);
        for _ in 0..n.max(0) {
            v.push(self.string()?);
        }
        Ok(v)
    }
    pub fn stat(&mut self) -> Result<Stat, Short> {
        Ok(Stat {
            czxid: self.i64()?,
            mzxid: self.i64()?,
            ctime: self.i64()?,
            mtime: self.i64()?,
            version: self.i32()?,
            cversion: self.i32()?,
            aversion: self.i32()?,
            ephemeral_owner: self.i64()?,
            data_length: self.i32()?,
            num_children: self.i32()?,
            pzxid: self.i64()?,
        })
    }
}

#[derive(Debug, Clone, Default)]
#[allow(dead_code)]
pub struct Stat {
    pub czxid: i64,
    pub mzxid: i64,
    pub ctime: i64,
    pub mtime: i64,
    pub version: i32,
    pub cversion: i32,
    pub aversion: i32,
    pub ephemeral_owner: i64,
    pub data_length: i32,
    pub num_children: i32,
    pub pzxid: i64,
}

#[derive(Debug, Clone)]
pub struct Acl {
    pub perms: i32,
    pub scheme: String,
    pub id: String,
}

impl Acl {
    pub fn open() -> Vec<Acl> {
        vec![Acl {
            perms: PERM_ALL,
            scheme: "world".into(),
            id: "anyone".into(),
        }]
    }

    /// Only `user` (digest) may modify; anyone may read.
    pub fn digest_only(user_colon_pass: &str) -> Vec<Acl> {
        let user = user_colon_pass.split(':').next().unwrap_or_default();
        vec![
            Acl {
                perms: PERM_ALL,
                scheme: "digest".into(),
                id: format!("{user}:{}", digest(user_colon_pass)),
            },
            Acl {
                perms: PERM_READ,
                scheme: "world".into(),
                id: "anyone".into(),
            },
        ]
    }
}

/// ZooKeeper's digest id of `user:password`: base64(SHA-1(`user:password`)), as its
/// `DigestAuthenticationProvider.generateDigest`.
fn digest(user_colon_pass: &str) -> String {
    use base64::Engine;
    use sha1::Digest;
    base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(user_colon_pass))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_known_values() {
        assert_eq!(digest("abc"), "qZk+NkcGgWq6PiVxeFDCbJzQ2J0=");
        assert_eq!(digest(""), "2jmj7l5rSw0yVb/vlWAYkK/YBwk=");
        // ZooKeeper's own example: DigestAuthenticationProvider.generateDigest("super:test")
        let a = Acl::digest_only("super:test");
        assert_eq!(a[0].id, "super:D/InIHSb7yEEbrWz8b9l71RjZJU=");
    }

    #[test]
    fn decoder_rejects_short_input() {
        let mut r = R::new(&[0, 0, 0, 5, b'a']);
        assert!(r.buf().is_err());
        let mut r = R::new(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(r.buf().unwrap(), Vec::<u8>::new());
    }
}
