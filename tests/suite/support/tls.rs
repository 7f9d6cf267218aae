//! Test support for HTTPS: certificates made at test time (rcgen), and a
//! real TLS client (rustls and hyper) that says which certificate the
//! gateway served.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use super::Shoal;

const DAY: Duration = Duration::from_secs(86_400);

/// A certificate authority made for one test, and the certificates it
/// signs.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA's certificate (DER), for clients that verify.
    pub der: Vec<u8>,
}

/// A certificate and its key, as PEM and as the DER a client sees.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Leaf {
    /// Writes the pair into `dir` as `NAME.crt` and `NAME.key`; returns the
    /// paths as strings.
    pub fn write(&self, dir: &super::Scratch, name: &str) -> (String, String) {
        let cert = dir.write(&format!("{name}.crt"), &self.cert_pem);
        let key = dir.write(&format!("{name}.key"), &self.key_pem);
        (cert.display().to_string(), key.display().to_string())
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "Shoal test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().to_vec();
        TestCa { issuer: rcgen::Issuer::new(params, key), der }
    }

    /// A certificate for `names`, valid from `from_days` to `to_days` days
    /// from now (negative: in the past).
    pub fn leaf(&self, names: &[&str], from_days: i64, to_days: i64) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let now = rcgen::date_time_ymd(1970, 1, 1) + unix_now();
        let shift = |days: i64| {
            if days >= 0 { now + DAY * days as u32 } else { now - DAY * days.unsigned_abs() as u32 }
        };
        params.not_before = shift(from_days);
        params.not_after = shift(to_days);
        params.distinguished_name.push(rcgen::DnType::CommonName, names.first().copied().unwrap_or("none"));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }

    /// A client configuration that trusts this CA only.
    pub fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(self.der.clone())).unwrap();
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

fn unix_now() -> Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any server certificate (the tests look at which one came),
/// still checking the handshake's signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client configuration that takes any certificate, offering `alpn`,
/// with TLS 1.3 and 1.2 (or only `version`).
pub fn any_certificate(
    alpn: &[&[u8]],
    version: Option<&'static rustls::SupportedProtocolVersion>,
) -> Arc<ClientConfig> {
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = match version {
        Some(version) => vec![version],
        None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

/// One HTTPS connection to the gateway, kept open for several requests.
pub struct Conn {
    sender: Sender,
    /// The certificate the gateway served (DER).
    pub cert: Vec<u8>,
    /// The protocol ALPN chose, if any.
    pub alpn: Option<Vec<u8>>,
    /// The TLS version.
    pub version: Option<rustls::ProtocolVersion>,
}

impl Conn {
    /// Connects to `addr`, asking for `sni` (an IP address sends none).
    pub async fn open(addr: SocketAddr, config: Arc<ClientConfig>, sni: &str) -> Result<Conn, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from(sni.to_owned()).map_err(|e| format!("server name {sni:?}: {e}"))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
            .await
            .map_err(|_| "handshake: no answer within 10 s".to_owned())?
            .map_err(|e| format!("handshake: {e}"))?;
        let session = tls.get_ref().1;
        let cert = session.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let version = session.protocol_version();
        let io = TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) =
                hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("http/1.1 handshake: {e}"))?;
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        Ok(Conn { sender, cert, alpn, version })
    }

    /// GET `path` with Host `host`: (status, version, headers, body).
    pub async fn get(&mut self, host: &str, path: &str) -> Result<Answer, String> {
        let exchange = async {
            let response = match &mut self.sender {
                Sender::H1(sender) => {
                    sender.ready().await.map_err(|e| format!("connection: {e}"))?;
                    let request = hyper::Request::get(path).header("host", host).body(Empty::new()).unwrap();
                    sender.send_request(request).await
                }
                Sender::H2(sender) => {
                    sender.ready().await.map_err(|e| format!("connection: {e}"))?;
                    let request = hyper::Request::get(format!("https://{host}{path}")).body(Empty::new()).unwrap();
                    sender.send_request(request).await
                }
            }
            .map_err(|e| format!("request: {e}"))?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
            Ok(Answer {
                status: parts.status.as_u16(),
                version: parts.version,
                headers: parts.headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        tokio::time::timeout(Duration::from_secs(10), exchange).await.map_err(|_| "no answer within 10 s".to_owned())?
    }
}

/// A response.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub version: hyper::Version,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

/// One GET over a new HTTPS connection: the answer and the connection's
/// certificate.
pub async fn https_get(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    sni: &str,
    path: &str,
) -> Result<(Answer, Vec<u8>), String> {
    let mut conn = Conn::open(addr, config, sni).await?;
    let answer = conn.get(sni, path).await?;
    Ok((answer, conn.cert))
}

impl Shoal {
    /// The HTTPS listener's address (started with `--tls-listen`).
    pub fn https_addr(&self) -> SocketAddr {
        let output = self.output.lock().unwrap();
        let line = output
            .iter()
            .find(|l| l.contains("gateway listening on https://"))
            .expect("shoal up printed no HTTPS address (started without --tls-listen?)");
        line.rsplit("https://").next().unwrap().trim().parse().unwrap()
    }
}
