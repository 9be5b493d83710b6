//! Mutual TLS for the fabric API: one podtap CA signs the controller's server certificate and
//! the agents' and brokers' client certificates. The controller accepts only clients with a
//! certificate from that CA; members accept only a controller certificate for
//! [`CONTROLLER_NAME`] from it, whatever address they dial.
//!
//! `podtap certs` writes a fresh set (`ca.crt`, `controller.{crt,key}`, `agent.{crt,key}`,
//! `broker.{crt,key}`); `podtap install` puts them in Secrets. Keys never leave those files.

use std::path::Path;

use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The name in the controller's certificate that members check.
pub const CONTROLLER_NAME: &str = "podtap-controller";

/// The roles that get a certificate.
pub const ROLES: [&str; 3] = ["controller", "agent", "broker"];

/// A CA and one certificate per role, PEM encoded.
pub struct Bundle {
    pub ca_cert: String,
    /// `(role, certificate, key)` for each of [`ROLES`].
    pub leaves: Vec<(String, String, String)>,
}

/// Installs the ring crypto provider as the process default (once; later calls do nothing).
/// tonic's server and kube's client both take the process default.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A fresh CA and certificates. `controller_names` are extra DNS names for the controller's
/// certificate (its Service names), besides [`CONTROLLER_NAME`].
pub fn generate(controller_names: &[String]) -> anyhow::Result<Bundle> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "podtap fabric CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, &ca_key);
    let mut leaves = Vec::new();
    for role in ROLES {
        let key = rcgen::KeyPair::generate()?;
        let names = if role == "controller" {
            std::iter::once(CONTROLLER_NAME.to_string())
                .chain(controller_names.iter().cloned())
                .collect()
        } else {
            vec![format!("podtap-{role}")]
        };
        let mut p = rcgen::CertificateParams::new(names)?;
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("podtap-{role}"));
        p.extended_key_usages = vec![if role == "controller" {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = p.signed_by(&key, &issuer)?;
        leaves.push((role.to_string(), cert.pem(), key.serialize_pem()));
    }
    Ok(Bundle {
        ca_cert: ca_cert.pem(),
        leaves,
    })
}

/// Writes a bundle into `dir` (created; keys readable by the owner only).
pub fn write(bundle: &Bundle, dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let put = |name: String, text: &str, mode: u32| -> anyhow::Result<()> {
        let path = dir.join(&name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        std::io::Write::write_all(&mut f, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    };
    put("ca.crt".into(), &bundle.ca_cert, 0o644)?;
    for (role, cert, key) in &bundle.leaves {
        put(format!("{role}.crt"), cert, 0o644)?;
        put(format!("{role}.key"), key, 0o600)?;
    }
    Ok(())
}

fn read(dir: &Path, name: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (create the fabric's certificates with `podtap certs --out {}`)",
            path.display(),
            dir.display()
        )
    })
}

/// The controller's server side: its certificate, and client certificates required from the CA.
pub fn server_config(dir: &Path) -> anyhow::Result<ServerTlsConfig> {
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read(dir, "controller.crt")?,
            read(dir, "controller.key")?,
        ))
        .client_ca_root(Certificate::from_pem(read(dir, "ca.crt")?)))
}

/// A member's client side: its role's certificate, and the controller's checked against the CA.
pub fn client_config(dir: &Path, role: &str) -> anyhow::Result<ClientTlsConfig> {
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(dir, "ca.crt")?))
        .domain_name(CONTROLLER_NAME)
        .identity(Identity::from_pem(
            read(dir, &format!("{role}.crt"))?,
            read(dir, &format!("{role}.key"))?,
        )))
}

/// A connection to the controller at `url` (`https://HOST:PORT`) as `role` (agent or broker).
pub async fn connect(
    url: &str,
    dir: &Path,
    role: &str,
) -> anyhow::Result<tonic::transport::Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .with_context(|| format!("controller address {url:?}"))?
        .tls_config(client_config(dir, role)?)?
        .connect_timeout(std::time::Duration::from_secs(5))
        .http2_keep_alive_interval(std::time::Duration::from_secs(10))
        .keep_alive_timeout(std::time::Duration::from_secs(10));
    endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to the controller at {url}"))
}

/// Serves the fabric API with mutual TLS on `listener` until `stop` resolves.
pub async fn serve(
    service: crate::proto::fabric_server::FabricServer<crate::fabric::Fabric>,
    listener: tokio::net::TcpListener,
    dir: &Path,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .tls_config(server_config(dir)?)?
        .add_service(service)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop,
        )
        .await?;
    Ok(())
}
