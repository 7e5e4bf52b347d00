//! The parts of Consul's HTTP API that locks use, on [`Client`]: sessions, KV reads (plain
//! and blocking) and transactions, with the answer types. KV values travel base64-encoded.

use super::http::{encode_path, go_duration, wait_for, Client, Method, REQUEST_TIMEOUT};
use crate::backend::Wait;
use crate::{Error, ErrorKind, Result};
use base64::Engine as _;
use serde::Deserialize;
use std::time::Duration;

/// Consul's KV values: standard base64 with padding.
pub fn b64_encode(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// None when the text is not base64.
pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// A KV entry as Consul returns it.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "PascalCase")]
pub struct KvEntry {
    pub key: String,
    #[serde(default)]
    pub flags: u64,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default)]
    pub lock_index: u64,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

impl KvEntry {
    /// The session holding this key, if any.
    pub fn holder(&self) -> Option<&str> {
        self.session.as_deref().filter(|s| !s.is_empty())
    }

    /// The decoded value (None: no value, or not base64).
    pub fn bytes(&self) -> Option<Vec<u8>> {
        self.value.as_deref().and_then(b64_decode)
    }
}

/// A session as `/v1/session/info` returns it.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct SessionInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub node: String,
}

/// The outcome of a transaction.
pub enum Txn {
    /// Applied: the KV results, in op order (ops that return nothing are skipped by Consul).
    Applied(Vec<KvEntry>),
    /// Rolled back: Consul's reasons.
    Failed(Vec<String>),
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnReply {
    #[serde(default)]
    results: Option<Vec<TxnResult>>,
    #[serde(default)]
    errors: Option<Vec<TxnError>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResult {
    #[serde(rename = "KV", default)]
    kv: Option<KvEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnError {
    #[serde(default)]
    what: String,
}

impl Client {
    // --- sessions -------------------------------------------------------------------------

    pub fn session_create(&self, body: &serde_json::Value) -> Result<String> {
        let data = serde_json::to_vec(body).map_err(|e| self.malformed("session create", e))?;
        let r = self.call(
            Method::Put,
            "/v1/session/create",
            Some(&data),
            REQUEST_TIMEOUT,
        )?;
        if r.status != 200 {
            return Err(self.status_error("create a session", &r));
        }
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let c: Created =
            serde_json::from_slice(&r.body).map_err(|e| self.malformed("session create", e))?;
        if c.id.is_empty() || c.id.len() > 64 {
            return Err(self.malformed("session create", "no session ID"));
        }
        Ok(c.id)
    }

    /// Renew a session; Ok(false) when it no longer exists.
    pub fn session_renew(&self, id: &str) -> Result<bool> {
        let path = format!("/v1/session/renew/{}", encode_path(id));
        let r = self.call(Method::Put, &path, None, REQUEST_TIMEOUT)?;
        match r.status {
            200 => {
                // An empty list is also "not found" on some versions.
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                Ok(!matches!(v, serde_json::Value::Null)
                    && v.as_array().map(|a| !a.is_empty()).unwrap_or(true))
            }
            404 => Ok(false),
            _ => Err(self.status_error("renew the lock's session", &r)),
        }
    }

    pub fn session_destroy(&self, id: &str) -> Result<()> {
        let path = format!("/v1/session/destroy/{}", encode_path(id));
        let r = self.call(Method::Put, &path, None, REQUEST_TIMEOUT)?;
        if r.status != 200 {
            return Err(self.status_error("destroy a session", &r));
        }
        Ok(())
    }

    pub fn session_info(&self, id: &str) -> Result<Option<SessionInfo>> {
        let path = format!("/v1/session/info/{}", encode_path(id));
        let r = self.call(Method::Get, &path, None, REQUEST_TIMEOUT)?;
        if r.status == 404 {
            return Ok(None);
        }
        if r.status != 200 {
            return Err(self.status_error("read a session", &r));
        }
        let v: Option<Vec<SessionInfo>> =
            serde_json::from_slice(&r.body).map_err(|e| self.malformed("session info", e))?;
        Ok(v.and_then(|v| v.into_iter().next()))
    }

    // --- KV ---------------------------------------------------------------------------------

    fn kv_read(
        &self,
        path: String,
        block: Option<(u64, Duration)>,
        what: &str,
    ) -> Result<(Vec<KvEntry>, u64)> {
        let (path, timeout) = match block {
            Some((index, wait)) if index > 0 => {
                let sep = if path.contains('?') { '&' } else { '?' };
                (
                    format!("{path}{sep}index={index}&wait={}", go_duration(wait)),
                    // Consul adds up to wait/16 of jitter.
                    wait + wait / 16 + REQUEST_TIMEOUT,
                )
            }
            _ => (path, REQUEST_TIMEOUT),
        };
        let r = self.call(Method::Get, &path, None, timeout)?;
        let index = r.index.unwrap_or(0);
        match r.status {
            404 => Ok((Vec::new(), index)),
            200 => {
                let v: Option<Vec<KvEntry>> =
                    serde_json::from_slice(&r.body).map_err(|e| self.malformed(what, e))?;
                Ok((v.unwrap_or_default(), index))
            }
            _ => Err(self.status_error(what, &r)),
        }
    }

    /// Read one key; with `block = Some((index, wait))` a blocking query.
    pub fn kv_get(
        &self,
        key: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(Option<KvEntry>, u64)> {
        let (v, i) = self.kv_read(
            format!("/v1/kv/{}", encode_path(key)),
            block,
            &format!("read key {key}"),
        )?;
        Ok((v.into_iter().find(|e| e.key == key), i))
    }

    /// Every key starting with `prefix`.
    pub fn kv_list(
        &self,
        prefix: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(Vec<KvEntry>, u64)> {
        self.kv_read(
            format!("/v1/kv/{}?recurse=true", encode_path(prefix)),
            block,
            &format!("list keys under {prefix}"),
        )
    }

    /// Apply a transaction of KV ops (JSON objects as Consul's `/v1/txn` takes them).
    pub fn txn(&self, ops: &[serde_json::Value]) -> Result<Txn> {
        let body: Vec<serde_json::Value> = ops
            .iter()
            .map(|op| serde_json::json!({ "KV": op }))
            .collect();
        let data = serde_json::to_vec(&body).map_err(|e| self.malformed("transaction", e))?;
        let r = self.call(Method::Put, "/v1/txn", Some(&data), REQUEST_TIMEOUT)?;
        match r.status {
            200 | 409 => {
                let t: TxnReply = serde_json::from_slice(&r.body)
                    .map_err(|e| self.malformed("a transaction", e))?;
                let errors: Vec<String> = t
                    .errors
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| e.what)
                    .collect();
                if errors.is_empty() && r.status == 200 {
                    Ok(Txn::Applied(
                        t.results
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(|r| r.kv)
                            .collect(),
                    ))
                } else if errors.iter().any(|w| is_acl_text(w)) {
                    Err(Error::new(
                        ErrorKind::Permission,
                        self.scrub(format!(
                            "Consul at {} refused the lock operation: {} (check CONSUL_HTTP_TOKEN / \
                             CONSUL_HTTP_TOKEN_FILE and the token's key and session rights)",
                            self.addr,
                            crate::target::printable(&errors.join("; "))
                        )),
                    ))
                } else if errors.is_empty() {
                    Err(self.malformed("a transaction", "HTTP 409 without errors"))
                } else {
                    Ok(Txn::Failed(errors))
                }
            }
            _ => Err(self.status_error("apply a lock transaction", &r)),
        }
    }
}

/// A blocking read of one key from `index` for `block` at most, interrupted by the wait's
/// cancel and deadline (None: the deadline passed).
pub fn wait_for_key(
    wait: &Wait,
    client: &Client,
    key: &str,
    index: u64,
    block: Duration,
) -> Result<Option<(Option<KvEntry>, u64)>> {
    let k = key.to_string();
    wait_for(wait, client, move |c| c.kv_get(&k, Some((index, block))))
}

/// A blocking listing of a prefix, as [`wait_for_key`].
pub fn wait_for_list(
    wait: &Wait,
    client: &Client,
    prefix: &str,
    index: u64,
    block: Duration,
) -> Result<Option<(Vec<KvEntry>, u64)>> {
    let p = prefix.to_string();
    wait_for(wait, client, move |c| c.kv_list(&p, Some((index, block))))
}

pub fn is_acl_text(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    l.contains("permission denied") || l.contains("acl not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for s in ["", "a", "ab", "abc", "abcd", "{\"x\":1}", "\u{e9}\u{e8}"] {
            let e = b64_encode(s.as_bytes());
            assert_eq!(b64_decode(&e).unwrap(), s.as_bytes(), "{s:?} {e}");
        }
        assert_eq!(b64_encode(b"{}"), "e30=");
        assert!(b64_decode("***").is_none());
    }

    #[test]
    fn kv_entry_parses_consul_json_and_huge_flags() {
        let j = r#"[{"LockIndex":1,"Key":"a/.lock","Flags":16210313421097356768,"Value":"e30=","Session":"s","CreateIndex":5,"ModifyIndex":9}]"#;
        let v: Vec<KvEntry> = serde_json::from_str(j).unwrap();
        assert_eq!(v[0].flags, 0xe0f69a2baa414de0);
        assert_eq!(v[0].bytes().unwrap(), b"{}");
        assert_eq!(v[0].holder(), Some("s"));
    }
}
