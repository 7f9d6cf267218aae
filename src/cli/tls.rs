//! `shoal tls add HOST --cert FILE --key FILE` and `shoal tls delete HOST`:
//! the certificates HTTPS serves per host.
//!
//! `add` checks the pair here first, as the admin API does again, so that
//! what is wrong names the file it is in.

use anyhow::{Context as _, bail};
use shoal_api::CertificateUpload;
use shoal_api::CertificateView;
use shoal_gateway::tls::{Certificate, format_unix, now_unix};

use super::client::Client;
use super::connect::encode;
use super::{TlsAddArgs, TlsDeleteArgs};

pub async fn add(args: TlsAddArgs) -> anyhow::Result<()> {
    let host = shoal_api::check_host(&args.host).map_err(|message| anyhow::anyhow!("host {message}"))?;
    let (cert_name, key_name) = (args.cert.display().to_string(), args.key.display().to_string());
    let cert = std::fs::read(&args.cert).with_context(|| format!("cannot read the certificate {cert_name}"))?;
    let key = std::fs::read(&args.key).with_context(|| format!("cannot read the key {key_name}"))?;
    let certificate = match Certificate::load(&cert, &key, now_unix()) {
        Ok(certificate) => certificate,
        Err(error) => bail!("{}", error.naming(&cert_name, &key_name)),
    };
    if !certificate.info.covers(&host) {
        bail!(
            "{cert_name}: the certificate is not valid for {host}: it names {}",
            if certificate.info.names.is_empty() { "nothing".to_owned() } else { certificate.info.names.join(", ") }
        );
    }
    let (Ok(cert), Ok(key)) = (String::from_utf8(cert), String::from_utf8(key)) else {
        bail!("{cert_name} or {key_name} is not text (PEM files are)");
    };
    let client = Client::new(&args.connect)?;
    let existed = client.get::<CertificateView>(&format!("/v1/certificates/{}", encode(&host))).await.is_ok();
    let view: CertificateView =
        client.put(&format!("/v1/certificates/{}", encode(&host)), &CertificateUpload { cert, key }).await?;
    println!(
        "certificate/{host} {} (names {}; expires {})",
        if existed { "replaced" } else { "added" },
        view.names.join(", "),
        format_unix(view.not_after_unix)
    );
    for warning in &view.warnings {
        eprintln!("warning: {cert_name}: {warning}");
    }
    Ok(())
}

pub async fn delete(args: TlsDeleteArgs) -> anyhow::Result<()> {
    let host = args.host.to_ascii_lowercase();
    let client = Client::new(&args.connect)?;
    let _: serde_json::Value = client.delete(&format!("/v1/certificates/{}", encode(&host))).await?;
    println!("certificate/{host} deleted (its clients get the default certificate)");
    Ok(())
}
