//! Mesh identities and mutual TLS between agents (rustls, TLS 1.3 only).
//!
//! A mesh root CA ([`init_ca`]) issues each workload a leaf ([`issue`]) whose URI SAN is its SPIFFE
//! id, `spiffe://<trust-domain>/ns/<namespace>/sa/<app>`. An outbound agent names the service it
//! means to reach in the TLS server name (`<app>.<namespace>.mesh`); [`SpiffeVerifier`] checks the
//! peer's chain against the mesh CA *and* that its SPIFFE id is that service's, so an endpoint
//! presenting another app's identity is refused. Inbound, [`WebPkiClientVerifier`] checks client
//! certificates against the mesh CA and the caller's SPIFFE id becomes its identity.
//!
//! The agent's own certificate and key are re-read when their files change ([`CertSwap`]): new
//! handshakes use the new pair, open connections keep going.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// A mesh identity problem: files, certificates, or a configuration rustls refused.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct TlsError {
    /// What was being done, with the file.
    pub what: String,
    /// Why it failed.
    pub message: String,
}

fn err(what: impl Into<String>, message: impl std::fmt::Display) -> TlsError {
    TlsError { what: what.into(), message: message.to_string() }
}

/// The default trust domain.
pub const TRUST_DOMAIN: &str = "meshlens.local";

/// The SPIFFE id of an app.
pub fn spiffe_id(trust_domain: &str, namespace: &str, app: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{app}")
}

/// The TLS server name an outbound agent uses for a service.
pub fn server_name(namespace: &str, app: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(format!("{app}.{namespace}.mesh"))
        .map_err(|e| err(format!("service {namespace}/{app}"), format!("not a valid TLS server name: {e}")))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Creates a mesh root CA in `dir`: `ca.pem` and `ca.key` (refuses to overwrite).
pub fn init_ca(dir: &Path, trust_domain: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    std::fs::create_dir_all(dir).map_err(|e| err(format!("creating {}", dir.display()), e))?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    if cert_path.exists() {
        return Err(err(cert_path.display().to_string(), "already exists; a CA is created once"));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| err("generating the CA key", e))?;
    let mut params = ca_params(trust_domain)?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(3650);
    let cert = params.self_signed(&key).map_err(|e| err("signing the CA", e))?;
    write_private(&key_path, key.serialize_pem())?;
    std::fs::write(&cert_path, cert.pem()).map_err(|e| err(format!("writing {}", cert_path.display()), e))?;
    let domain = dir.join("trust-domain");
    std::fs::write(&domain, trust_domain).map_err(|e| err(format!("writing {}", domain.display()), e))?;
    Ok((cert_path, key_path))
}

/// The CA's name and constraints; leaves are signed by an issuer built from the same, so their
/// issuer name matches the CA certificate's subject.
fn ca_params(trust_domain: &str) -> Result<rcgen::CertificateParams, TlsError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA parameters", e))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("meshlens mesh CA ({trust_domain})"));
    params.distinguished_name.push(rcgen::DnType::OrganizationName, trust_domain);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// The trust domain of the CA in `dir`.
pub fn ca_trust_domain(dir: &Path) -> Result<String, TlsError> {
    Ok(read(&dir.join("trust-domain"))?.trim().to_owned())
}

fn write_private(path: &Path, text: String) -> Result<(), TlsError> {
    std::fs::write(path, text).map_err(|e| err(format!("writing {}", path.display()), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(())
}

/// What [`issue`] made.
#[derive(Debug)]
pub struct Issued {
    /// The leaf and the CA, PEM.
    pub cert: PathBuf,
    /// The leaf's key, PEM.
    pub key: PathBuf,
    /// Its SPIFFE id.
    pub spiffe_id: String,
}

/// Issues a leaf for `namespace/app` (any version shares the app's identity) signed by the CA in
/// `dir`, valid from `not_before` for `ttl`, into `dir/<ns>-<app>[-<version>].pem|.key`.
pub fn issue(
    dir: &Path,
    namespace: &str,
    app: &str,
    file_stem: &str,
    not_before: SystemTime,
    ttl: Duration,
) -> Result<Issued, TlsError> {
    issue_with_names(dir, namespace, app, file_stem, not_before, ttl, &[])
}

/// [`issue`], with more subject names: each an IP address or a DNS name, for clients that check
/// names the usual way (curl, the OpenTelemetry SDKs, browsers reaching a collector). Every leaf
/// also carries the DNS name `APP.NS.mesh`, the name agents dial.
pub fn issue_with_names(
    dir: &Path,
    namespace: &str,
    app: &str,
    file_stem: &str,
    not_before: SystemTime,
    ttl: Duration,
    names: &[String],
) -> Result<Issued, TlsError> {
    let trust_domain = ca_trust_domain(dir)?;
    let ca_cert = read(&dir.join("ca.pem"))?;
    let ca_key = read(&dir.join("ca.key"))?;
    let ca_key = rcgen::KeyPair::from_pem(&ca_key).map_err(|e| err(format!("{}/ca.key", dir.display()), e))?;
    let issuer = rcgen::Issuer::new(ca_params(&trust_domain)?, ca_key);
    let id = spiffe_id(&trust_domain, namespace, app);
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| err("leaf parameters", e))?;
    let dns = |n: &str| {
        rcgen::string::Ia5String::try_from(n.to_owned())
            .map(rcgen::SanType::DnsName)
            .map_err(|e| err(format!("subject name {n:?}"), e))
    };
    params.subject_alt_names = vec![
        rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from(id.clone()).map_err(|e| err(format!("SPIFFE id {id}"), e))?,
        ),
        dns(&format!("{app}.{namespace}.mesh"))?,
    ];
    for n in names {
        params.subject_alt_names.push(match n.parse::<std::net::IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => dns(n)?,
        });
    }
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("{namespace}/{app}"));
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let start = time::OffsetDateTime::from_unix_timestamp(
        not_before.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64),
    )
    .map_err(|e| err("not_before", e))?;
    params.not_before = start;
    params.not_after = start + ttl;
    let key = rcgen::KeyPair::generate().map_err(|e| err("generating the leaf key", e))?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| err("signing the leaf", e))?;
    let (cert_path, key_path) = (dir.join(format!("{file_stem}.pem")), dir.join(format!("{file_stem}.key")));
    // The chain: the leaf, then the CA.
    std::fs::write(&cert_path, format!("{}{ca_cert}", cert.pem()))
        .map_err(|e| err(format!("writing {}", cert_path.display()), e))?;
    write_private(&key_path, key.serialize_pem())?;
    Ok(Issued { cert: cert_path, key: key_path, spiffe_id: id })
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|e| err(format!("reading {}", path.display()), e))
}

fn load_certified(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| err(format!("reading {}", cert.display()), e))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("reading {}", cert.display()), e))?;
    if chain.is_empty() {
        return Err(err(cert.display().to_string(), "no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| err(format!("reading {}", key.display()), e))?;
    let signing = provider.key_provider.load_private_key(key_der).map_err(|e| err(key.display().to_string(), e))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| err(format!("{} and {}", cert.display(), key.display()), e))?;
    Ok(Arc::new(certified))
}

/// The agent's certificate and key, swapped when their files change.
#[derive(Debug)]
pub struct CertSwap {
    current: ArcSwap<CertifiedKey>,
    cert: PathBuf,
    key: PathBuf,
    stamp: parking_lot::Mutex<Option<(SystemTime, SystemTime)>>,
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl CertSwap {
    /// Re-reads the files if either changed; `Ok(true)` when new ones were loaded. A bad pair is
    /// refused and the old one kept.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let stamp = (modified(&self.cert), modified(&self.key));
        let stamp = match stamp {
            (Some(a), Some(b)) => (a, b),
            _ => return Ok(false),
        };
        if *self.stamp.lock() == Some(stamp) {
            return Ok(false);
        }
        let next = load_certified(&self.cert, &self.key, &provider())?;
        self.current.store(next);
        *self.stamp.lock() = Some(stamp);
        Ok(true)
    }
}

impl rustls::server::ResolvesServerCert for CertSwap {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl rustls::client::ResolvesClientCert for CertSwap {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Checks a server's chain against the mesh CA and its SPIFFE id against the service the server
/// name stands for (`<app>.<namespace>.mesh`).
#[derive(Debug)]
pub struct SpiffeVerifier {
    roots: Vec<rustls::pki_types::TrustAnchor<'static>>,
    trust_domain: String,
    provider: Arc<CryptoProvider>,
}

impl SpiffeVerifier {
    fn expected(&self, name: &ServerName<'_>) -> Option<String> {
        let ServerName::DnsName(dns) = name else { return None };
        let mut parts = dns.as_ref().split('.');
        let (app, ns) = (parts.next()?, parts.next()?);
        Some(spiffe_id(&self.trust_domain, ns, app))
    }
}

/// The SPIFFE ids in a certificate.
pub fn spiffe_ids(cert: &CertificateDer<'_>) -> Vec<String> {
    webpki::EndEntityCert::try_from(cert)
        .map(|c| c.valid_uri_names().filter(|u| u.starts_with("spiffe://")).map(str::to_owned).collect())
        .unwrap_or_default()
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| rustls::Error::InvalidCertificate(webpki_error(e)))?;
        let want = self.expected(server_name).ok_or_else(|| rustls::Error::General("not a mesh server name".into()))?;
        let got: Vec<&str> = cert.valid_uri_names().collect();
        if got.contains(&want.as_str()) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!("the peer is {} but {want} was meant", got.join(", "))))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn webpki_error(e: webpki::Error) -> rustls::CertificateError {
    match e {
        webpki::Error::CertExpired { .. } => rustls::CertificateError::Expired,
        webpki::Error::CertNotValidYet { .. } => rustls::CertificateError::NotValidYet,
        webpki::Error::UnknownIssuer => rustls::CertificateError::UnknownIssuer,
        other => rustls::CertificateError::Other(rustls::OtherError(Arc::new(WebpkiError(other.to_string())))),
    }
}

#[derive(Debug)]
struct WebpkiError(String);

impl std::fmt::Display for WebpkiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WebpkiError {}

/// Everything an agent needs for mutual TLS.
#[derive(Debug)]
pub struct MeshTls {
    /// Inbound: requires (strict) or accepts (permissive) a mesh client certificate.
    pub server: Arc<ServerConfig>,
    /// Outbound HTTP/1.1 (ALPN http/1.1).
    pub client_h1: Arc<ClientConfig>,
    /// Outbound HTTP/2 (ALPN h2).
    pub client_h2: Arc<ClientConfig>,
    /// The agent's own pair.
    pub certs: Arc<CertSwap>,
    /// This agent's SPIFFE id.
    pub own_id: String,
}

impl MeshTls {
    /// Loads the agent's pair and the mesh CA and builds the configs.
    pub fn load(
        cert: &Path,
        key: &Path,
        ca: &Path,
        trust_domain: &str,
        require_client_cert: bool,
    ) -> Result<Self, TlsError> {
        let provider = provider();
        let certified = load_certified(cert, key, &provider)?;
        let own_id = spiffe_ids(&certified.cert[0])
            .into_iter()
            .next()
            .ok_or_else(|| err(cert.display().to_string(), "the certificate has no spiffe:// URI SAN"))?;
        let mut roots = RootCertStore::empty();
        let ca_certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .map_err(|e| err(format!("reading {}", ca.display()), e))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(format!("reading {}", ca.display()), e))?;
        for c in &ca_certs {
            roots.add(c.clone()).map_err(|e| err(ca.display().to_string(), e))?;
        }
        if roots.is_empty() {
            return Err(err(ca.display().to_string(), "no CA certificate in the file"));
        }
        let roots = Arc::new(roots);
        let swap = Arc::new(CertSwap {
            current: ArcSwap::new(certified),
            cert: cert.to_owned(),
            key: key.to_owned(),
            stamp: parking_lot::Mutex::new(modified(cert).zip(modified(key))),
        });
        let mut verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
        if !require_client_cert {
            verifier = verifier.allow_unauthenticated();
        }
        let verifier = verifier.build().map_err(|e| err("client verifier", e))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| err("TLS 1.3", e))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(swap.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let anchors = roots.roots.clone();
        let spiffe = Arc::new(SpiffeVerifier {
            roots: anchors,
            trust_domain: trust_domain.to_owned(),
            provider: provider.clone(),
        });
        let client = |alpn: &[u8]| -> Result<Arc<ClientConfig>, TlsError> {
            let mut c = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| err("TLS 1.3", e))?
                .dangerous()
                .with_custom_certificate_verifier(spiffe.clone())
                .with_client_cert_resolver(swap.clone());
            c.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(c))
        };
        Ok(Self {
            server: Arc::new(server),
            client_h1: client(b"http/1.1")?,
            client_h2: client(b"h2")?,
            certs: swap,
            own_id,
        })
    }
}

/// The caller's SPIFFE id on an inbound TLS connection.
pub fn peer_id(conn: &rustls::ServerConnection) -> Option<String> {
    conn.peer_certificates()?.first().and_then(|c| spiffe_ids(c).into_iter().next())
}

/// `ns/app` of a SPIFFE id of `trust_domain`.
pub fn workload_of(id: &str, trust_domain: &str) -> Option<(String, String)> {
    let rest = id.strip_prefix("spiffe://")?.strip_prefix(trust_domain)?.strip_prefix("/ns/")?;
    let (ns, rest) = rest.split_once('/')?;
    let app = rest.strip_prefix("sa/")?;
    (!ns.is_empty() && !app.is_empty() && !app.contains('/')).then(|| (ns.to_owned(), app.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_a_leaf_with_its_spiffe_id() {
        let dir = tempfile_dir();
        init_ca(&dir, TRUST_DOMAIN).unwrap();
        assert!(init_ca(&dir, TRUST_DOMAIN).unwrap_err().to_string().contains("already exists"));
        let leaf =
            issue(&dir, "shop", "reviews", "shop-reviews-v1", SystemTime::now(), Duration::from_secs(3600)).unwrap();
        assert_eq!(leaf.spiffe_id, "spiffe://meshlens.local/ns/shop/sa/reviews");
        let tls = MeshTls::load(&leaf.cert, &leaf.key, &dir.join("ca.pem"), TRUST_DOMAIN, true).unwrap();
        assert_eq!(tls.own_id, leaf.spiffe_id);
        assert_eq!(workload_of(&tls.own_id, TRUST_DOMAIN), Some(("shop".into(), "reviews".into())));
        assert_eq!(workload_of("spiffe://other/ns/shop/sa/reviews", TRUST_DOMAIN), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("meshlens-tls-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
