//! TLS for the agent connection, from Consul's own variables (`CONSUL_CACERT`, `CONSUL_CAPATH`,
//! `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY`, `CONSUL_HTTP_SSL_VERIFY`, read by [`Config`]).

use super::config::Config;
use crate::{Error, ErrorKind, Result};

fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<ureq::tls::PemItem<'static>>> {
    let data = std::fs::read(path)
        .map_err(|e| Error::os(format!("cannot read {what} {}", path.display()), e))?;
    let items: Vec<_> = ureq::tls::parse_pem(&data).filter_map(|i| i.ok()).collect();
    if items.is_empty() {
        return Err(Error::new(
            ErrorKind::Invalid,
            format!("{what} {} holds no PEM certificate or key", path.display()),
        ));
    }
    Ok(items)
}

fn certs_of(items: Vec<ureq::tls::PemItem<'static>>) -> Vec<ureq::tls::Certificate<'static>> {
    items
        .into_iter()
        .filter_map(|i| match i {
            ureq::tls::PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect()
}

pub(super) fn tls_config(cfg: &Config) -> Result<ureq::tls::TlsConfig> {
    use ureq::tls::{ClientCert, PemItem, RootCerts, TlsConfig};
    let mut b = TlsConfig::builder();
    let mut roots = Vec::new();
    if let Some(ca) = &cfg.ca_cert {
        roots.extend(certs_of(read_pem(ca, "CONSUL_CACERT")?));
    }
    if let Some(dir) = &cfg.ca_path {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| Error::os(format!("cannot read CONSUL_CAPATH {}", dir.display()), e))?;
        for e in entries.filter_map(|e| e.ok()) {
            if let Ok(items) = read_pem(&e.path(), "CONSUL_CAPATH file") {
                roots.extend(certs_of(items));
            }
        }
    }
    if !roots.is_empty() {
        b = b.root_certs(RootCerts::new_with_certs(&roots));
    } else if cfg.ca_cert.is_some() || cfg.ca_path.is_some() {
        return Err(Error::new(
            ErrorKind::Invalid,
            "CONSUL_CACERT/CONSUL_CAPATH hold no certificate",
        ));
    }
    if let (Some(cert), Some(key)) = (&cfg.client_cert, &cfg.client_key) {
        let chain = certs_of(read_pem(cert, "CONSUL_CLIENT_CERT")?);
        let key = read_pem(key, "CONSUL_CLIENT_KEY")?
            .into_iter()
            .find_map(|i| match i {
                PemItem::PrivateKey(k) => Some(k),
                _ => None,
            })
            .ok_or_else(|| {
                Error::new(ErrorKind::Invalid, "CONSUL_CLIENT_KEY holds no private key")
            })?;
        b = b.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    if !cfg.verify {
        b = b.disable_verification(true);
    }
    Ok(b.build())
}
