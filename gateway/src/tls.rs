//! HTTPS at the gateway: certificates, chosen per connection by the name
//! the client asks for (SNI), and the rustls configuration of the TLS
//! listener.
//!
//! - [`Certificate::load`] reads a PEM certificate chain and its private key
//!   and refuses what would fail a client: text that is not PEM, a key that
//!   is not the certificate's, a certificate that expired or is not valid
//!   yet. Its [`CertificateInfo`] (names, validity, issuer) is what the API
//!   shows; the key never leaves this module.
//! - [`Certificates`] is the table the handshakes read: a default
//!   certificate and one per host, exact names first, then `*.` wildcards,
//!   which match one label as browsers match them (`*.example.com` covers
//!   `a.example.com`, not `example.com` nor `a.b.example.com`). Replacing
//!   the table changes what new handshakes get at once; a connection keeps
//!   the certificate its handshake chose.
//! - [`server_config`]: TLS 1.3 and 1.2 only, ALPN `h2` then `http/1.1`,
//!   ring as the crypto provider (no OpenSSL, no C toolchain beyond ring's).
//! - [`TlsStats`]: handshakes by result and version, for `/metrics`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A certificate closer than this to its expiry is accepted with a
/// warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// What is wrong with a certificate and key offered together, by which of
/// the two is at fault, so that a caller can name the file or field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// The certificate (chain) is at fault.
    #[error("{0}")]
    Certificate(String),
    /// The private key is at fault.
    #[error("{0}")]
    Key(String),
    /// Each is readable, but the key is not the certificate's.
    #[error("the private key does not match the certificate (the certificate's public key belongs to another key)")]
    Mismatch,
}

impl CertificateError {
    /// The message with the culprit named: `CERT: …`, `KEY: …`, or both
    /// for a mismatch.
    pub fn naming(&self, cert: &str, key: &str) -> String {
        match self {
            CertificateError::Certificate(message) => format!("{cert}: {message}"),
            CertificateError::Key(message) => format!("{key}: {message}"),
            CertificateError::Mismatch => format!("{key} does not match {cert}: {self}"),
        }
    }
}

/// What the API shows of a certificate: never its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The DNS names and IP addresses it is valid for (its subject
    /// alternative names; its common name when it has none).
    pub names: Vec<String>,
    /// Its validity, in seconds since the Unix epoch.
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    /// Its issuer's distinguished name.
    pub issuer: String,
    /// Certificates in the chain (the leaf and its intermediates).
    pub chain_len: usize,
}

impl CertificateInfo {
    /// Whether a client asking for `host` accepts this certificate: one of
    /// its names is `host`, or is a `*.` wildcard whose one label `host`
    /// fills. A wildcard `host` is covered only by the same wildcard.
    pub fn covers(&self, host: &str) -> bool {
        let host = normalize(host);
        self.names.iter().any(|name| {
            let name = normalize(name);
            name == host
                || (!host.starts_with("*.")
                    && name.strip_prefix("*.").is_some_and(|parent| parent_of(&host) == Some(parent)))
        })
    }

    /// A warning when the certificate expires within [`EXPIRY_WARNING`]
    /// of `now`.
    pub fn expiry_warning(&self, now_unix: i64) -> Option<String> {
        let left = self.not_after_unix - now_unix;
        (left < EXPIRY_WARNING.as_secs() as i64).then(|| {
            format!(
                "the certificate expires in {} (on {}); renew it soon",
                human_days(left),
                format_unix(self.not_after_unix)
            )
        })
    }
}

/// A certificate chain with its key, ready for handshakes.
pub struct Certificate {
    pub info: CertificateInfo,
    /// Where it came from, for listings (`store`, `--tls-cert FILE`,
    /// `self-signed`).
    pub origin: String,
    key: Arc<CertifiedKey>,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate").field("info", &self.info).finish_non_exhaustive()
    }
}

impl Certificate {
    /// Reads a PEM certificate chain (leaf first) and its PEM private key
    /// (PKCS#8, PKCS#1 RSA or SEC1 EC), and checks that they belong
    /// together and that the leaf is valid at `now_unix`.
    pub fn load(cert_pem: &[u8], key_pem: &[u8], now_unix: i64) -> Result<Certificate, CertificateError> {
        Self::read(cert_pem, key_pem, Some(now_unix))
    }

    /// As [`Certificate::load`], whatever its validity period: for a
    /// certificate stored while it was valid. One that expired since is
    /// still served (its expiry shows in `/metrics` and `shoal get certs`)
    /// rather than silently replaced by the default.
    pub fn parse(cert_pem: &[u8], key_pem: &[u8]) -> Result<Certificate, CertificateError> {
        Self::read(cert_pem, key_pem, None)
    }

    /// The same, saying where it came from.
    pub fn with_origin(self, origin: impl Into<String>) -> Self {
        Certificate { origin: origin.into(), ..self }
    }

    fn read(cert_pem: &[u8], key_pem: &[u8], now_unix: Option<i64>) -> Result<Certificate, CertificateError> {
        let chain = certificate_chain(cert_pem)?;
        let info = describe(&chain)?;
        if let Some(now_unix) = now_unix {
            check_validity(&info, now_unix)?;
        }
        let key = private_key(key_pem)?;
        let provider = provider();
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| CertificateError::Key(format!("the private key cannot be used: {e}")))?;
        let certified = CertifiedKey::new(chain, signing);
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(CertificateError::Mismatch);
            }
            Err(error) => {
                return Err(CertificateError::Certificate(format!("the certificate cannot be used: {error}")));
            }
        }
        Ok(Certificate { info, origin: String::new(), key: Arc::new(certified) })
    }
}

/// Refuses a certificate that is not valid at `now_unix`.
fn check_validity(info: &CertificateInfo, now_unix: i64) -> Result<(), CertificateError> {
    if now_unix < info.not_before_unix {
        return Err(CertificateError::Certificate(format!(
            "the certificate is not valid yet: it is valid from {} (in {})",
            format_unix(info.not_before_unix),
            human_days(info.not_before_unix - now_unix)
        )));
    }
    if now_unix > info.not_after_unix {
        return Err(CertificateError::Certificate(format!(
            "the certificate expired on {} ({} ago)",
            format_unix(info.not_after_unix),
            human_days(now_unix - info.not_after_unix)
        )));
    }
    Ok(())
}

/// The certificates in `pem`, in order.
fn certificate_chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    let mut chain = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem) {
        let der = item.map_err(|e| CertificateError::Certificate(format!("not valid PEM: {e}")))?;
        chain.push(der);
    }
    if chain.is_empty() {
        let hint = if PrivateKeyDer::from_pem_slice(pem).is_ok() {
            " (it holds a private key: are the certificate and key files swapped?)"
        } else {
            ""
        };
        return Err(CertificateError::Certificate(format!(
            "not a PEM certificate: no \"-----BEGIN CERTIFICATE-----\" block in it{hint}"
        )));
    }
    Ok(chain)
}

/// The private key in `pem`.
fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, CertificateError> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            let hint = if CertificateDer::pem_slice_iter(pem).next().is_some() {
                " (it holds a certificate: are the certificate and key files swapped?)"
            } else {
                ""
            };
            Err(CertificateError::Key(format!(
                "not a PEM private key: no \"-----BEGIN PRIVATE KEY-----\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" \
                 block in it{hint}"
            )))
        }
        Err(error) => Err(CertificateError::Key(format!("not valid PEM: {error}"))),
    }
}

/// The names, validity and issuer of the leaf of `chain`.
fn describe(chain: &[CertificateDer<'_>]) -> Result<CertificateInfo, CertificateError> {
    let leaf = chain.first().expect("a chain has a leaf");
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| CertificateError::Certificate(format!("not an X.509 certificate: {e}")))?;
    let mut names = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertificateError::Certificate(format!("its subject alternative names do not parse: {e}")))?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => names.push(dns.to_ascii_lowercase()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    if let Ok(octets) = <[u8; 4]>::try_from(*bytes) {
                        names.push(std::net::Ipv4Addr::from(octets).to_string());
                    } else if let Ok(octets) = <[u8; 16]>::try_from(*bytes) {
                        names.push(std::net::Ipv6Addr::from(octets).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        names.extend(cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_ascii_lowercase));
    }
    let validity = cert.validity();
    Ok(CertificateInfo {
        names,
        not_before_unix: validity.not_before.timestamp(),
        not_after_unix: validity.not_after.timestamp(),
        issuer: cert.issuer().to_string(),
        chain_len: chain.len(),
    })
}

/// A certificate and key for `names` signed by themselves, as PEM
/// (certificate, key): what the TLS listener serves when no certificate
/// was given, for trying HTTPS out (`curl -k`). Clients cannot verify it.
pub fn self_signed(names: &[String]) -> anyhow::Result<(String, String)> {
    let generated = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| anyhow::anyhow!("cannot make a self-signed certificate: {e}"))?;
    Ok((generated.cert.pem(), generated.signing_key.serialize_pem()))
}

/// Lowercase, without a trailing dot.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// What follows the first label of `host`: `example.com` for
/// `a.example.com`; `None` for a single label.
fn parent_of(host: &str) -> Option<&str> {
    host.split_once('.').map(|(_, parent)| parent).filter(|parent| !parent.is_empty())
}

/// `seconds` in days, to the nearest (a certificate made to last 5 days
/// and read a moment later still expires "in 5 days"), or in hours under
/// half a day.
fn human_days(seconds: i64) -> String {
    let days = (seconds.abs() + 43_200) / 86_400;
    match days {
        0 => format!("{} hours", seconds.abs() / 3600),
        1 => "1 day".to_owned(),
        n => format!("{n} days"),
    }
}

/// `2026-12-01T13:00:00Z`.
pub fn format_unix(unix: i64) -> String {
    if unix < 0 {
        return format!("{unix} s before 1970");
    }
    let time = UNIX_EPOCH + Duration::from_secs(unix as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Seconds since the Unix epoch now.
pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The certificates handshakes choose from; see the module documentation.
#[derive(Debug, Default)]
pub struct Certificates {
    table: RwLock<Arc<Table>>,
}

#[derive(Debug, Default)]
struct Table {
    default: Option<Arc<Certificate>>,
    exact: HashMap<String, Arc<Certificate>>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, Arc<Certificate>>,
}

impl Certificates {
    /// Makes `certificate` the one served when no host's matches (or the
    /// client names none): `None` for none, when such handshakes fail.
    pub fn set_default(&self, certificate: Option<Arc<Certificate>>) {
        let mut table = self.table.write().expect("certificates lock");
        *table = Arc::new(Table { default: certificate, exact: table.exact.clone(), wildcard: table.wildcard.clone() });
    }

    /// Makes `hosts` (host or `*.` wildcard, and its certificate) the
    /// certificates per host, replacing the previous ones.
    pub fn set_hosts(&self, hosts: impl IntoIterator<Item = (String, Arc<Certificate>)>) {
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for (host, certificate) in hosts {
            let host = normalize(&host);
            match host.strip_prefix("*.") {
                Some(parent) => wildcard.insert(parent.to_owned(), certificate),
                None => exact.insert(host, certificate),
            };
        }
        let mut table = self.table.write().expect("certificates lock");
        *table = Arc::new(Table { default: table.default.clone(), exact, wildcard });
    }

    /// The certificate for a client that asked for `server_name` (SNI).
    pub fn pick(&self, server_name: Option<&str>) -> Option<Arc<Certificate>> {
        let table = self.table.read().expect("certificates lock").clone();
        if let Some(name) = server_name.map(normalize) {
            if let Some(found) = table.exact.get(&name) {
                return Some(found.clone());
            }
            if let Some(found) = parent_of(&name).and_then(|parent| table.wildcard.get(parent)) {
                return Some(found.clone());
            }
        }
        table.default.clone()
    }

    /// Every certificate, by host (`None`: the default, first), for
    /// `/metrics` and listings.
    pub fn list(&self) -> Vec<(Option<String>, Arc<Certificate>)> {
        let table = self.table.read().expect("certificates lock").clone();
        let mut list: Vec<(Option<String>, Arc<Certificate>)> = table
            .exact
            .iter()
            .map(|(host, c)| (Some(host.clone()), c.clone()))
            .chain(table.wildcard.iter().map(|(parent, c)| (Some(format!("*.{parent}")), c.clone())))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(default) = &table.default {
            list.insert(0, (None, default.clone()));
        }
        list
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(client_hello.server_name()).map(|c| c.key.clone())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS listener's configuration: certificates from `certificates`,
/// TLS 1.3 and 1.2, ALPN `h2` and `http/1.1`.
pub fn server_config(certificates: Arc<Certificates>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Handshakes so far, by result and version.
#[derive(Debug, Default)]
pub struct TlsStats {
    tls13: AtomicU64,
    tls12: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
}

/// How a handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Completed, with this version.
    Done(rustls::ProtocolVersion),
    /// The client sent something that is not TLS, or nothing both sides
    /// support, or asked for a name without a certificate.
    Failed,
    /// Not completed within the header timeout.
    TimedOut,
}

impl TlsStats {
    pub fn count(&self, handshake: Handshake) {
        let counter = match handshake {
            Handshake::Done(rustls::ProtocolVersion::TLSv1_3) => &self.tls13,
            Handshake::Done(_) => &self.tls12,
            Handshake::Failed => &self.failed,
            Handshake::TimedOut => &self.timed_out,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// (result, version, count) for every combination counted.
    pub fn snapshot(&self) -> [(&'static str, &'static str, u64); 4] {
        [
            ("ok", "TLSv1.3", self.tls13.load(Ordering::Relaxed)),
            ("ok", "TLSv1.2", self.tls12.load(Ordering::Relaxed)),
            ("failed", "", self.failed.load(Ordering::Relaxed)),
            ("timeout", "", self.timed_out.load(Ordering::Relaxed)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(names: &[&str], not_before: i64, not_after: i64) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.not_before = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(not_before as u64);
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(not_after as u64);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    const NOW: i64 = 1_800_000_000;
    const YEAR: i64 = 365 * 86_400;

    #[test]
    fn a_valid_pair_loads_with_its_names() {
        let (cert, key) = make(&["a.test", "*.w.test"], NOW - YEAR, NOW + YEAR);
        let loaded = Certificate::load(cert.as_bytes(), key.as_bytes(), NOW).unwrap();
        assert_eq!(loaded.info.names, ["a.test", "*.w.test"]);
        assert_eq!(loaded.info.not_after_unix, NOW + YEAR);
        assert!(loaded.info.expiry_warning(NOW).is_none());
        assert!(loaded.info.covers("A.test."));
        assert!(loaded.info.covers("x.w.test"));
        assert!(loaded.info.covers("*.w.test"));
        assert!(!loaded.info.covers("w.test"));
        assert!(!loaded.info.covers("y.x.w.test"));
        assert!(!loaded.info.covers("*.test"));
    }

    #[test]
    fn bad_pairs_are_refused_with_the_culprit_named() {
        let (cert, key) = make(&["a.test"], NOW - YEAR, NOW + YEAR);
        let (_, other_key) = make(&["a.test"], NOW - YEAR, NOW + YEAR);
        let load = |c: &str, k: &str, now| Certificate::load(c.as_bytes(), k.as_bytes(), now).unwrap_err();
        assert_eq!(load(&cert, &other_key, NOW), CertificateError::Mismatch);
        let error = load("hello", &key, NOW);
        assert!(matches!(&error, CertificateError::Certificate(m) if m.contains("not a PEM certificate")), "{error}");
        assert_eq!(error.naming("c.pem", "k.pem").split(':').next(), Some("c.pem"));
        let error = load(&cert, "hello", NOW);
        assert!(matches!(&error, CertificateError::Key(m) if m.contains("not a PEM private key")), "{error}");
        let error = load(&cert, &cert, NOW);
        assert!(error.to_string().contains("swapped"), "{error}");
        let error = load(&cert, &key, NOW + 2 * YEAR);
        assert!(matches!(&error, CertificateError::Certificate(m) if m.contains("expired on")), "{error}");
        let error = load(&cert, &key, NOW - 2 * YEAR);
        assert!(matches!(&error, CertificateError::Certificate(m) if m.contains("not valid yet")), "{error}");
        let broken = cert.replace("\n-----END", "!!\n-----END");
        let error = load(&broken, &key, NOW);
        assert!(matches!(&error, CertificateError::Certificate(_)), "{error}");
    }

    #[test]
    fn a_certificate_close_to_expiry_warns() {
        let (cert, key) = make(&["a.test"], NOW - YEAR, NOW + 3 * 86_400);
        let loaded = Certificate::load(cert.as_bytes(), key.as_bytes(), NOW).unwrap();
        let warning = loaded.info.expiry_warning(NOW).unwrap();
        assert!(warning.contains("expires in 3 days"), "{warning}");
        // Read a few seconds after it was made, it still lasts 3 days.
        let warning = loaded.info.expiry_warning(NOW + 5).unwrap();
        assert!(warning.contains("expires in 3 days"), "{warning}");
        let warning = loaded.info.expiry_warning(NOW + 3 * 86_400 - 7_200).unwrap();
        assert!(warning.contains("expires in 2 hours"), "{warning}");
    }

    #[test]
    fn sni_picks_exact_then_one_label_wildcard_then_default() {
        let load = |names: &[&str]| {
            let (cert, key) = make(names, NOW - YEAR, NOW + 10 * YEAR);
            Arc::new(Certificate::load(cert.as_bytes(), key.as_bytes(), now_unix()).unwrap())
        };
        let certificates = Certificates::default();
        assert!(certificates.pick(Some("a.test")).is_none());
        let (a, wild, default) = (load(&["a.test"]), load(&["*.w.test"]), load(&["localhost"]));
        certificates.set_hosts([("a.test".to_owned(), a.clone()), ("*.w.test".to_owned(), wild.clone())]);
        certificates.set_default(Some(default.clone()));
        let picked = |name: Option<&str>| certificates.pick(name).unwrap().info.names.clone();
        assert_eq!(picked(Some("A.Test")), a.info.names);
        assert_eq!(picked(Some("x.w.test")), wild.info.names);
        assert_eq!(picked(Some("y.x.w.test")), default.info.names);
        assert_eq!(picked(Some("w.test")), default.info.names);
        assert_eq!(picked(None), default.info.names);
        assert_eq!(certificates.list().len(), 3);
        // Replacing the hosts keeps the default.
        certificates.set_hosts([]);
        assert_eq!(picked(Some("a.test")), default.info.names);
    }
}
