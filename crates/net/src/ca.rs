//! The per-sandbox certificate authority used by the egress proxy to
//! terminate TLS for hosts that have a proxy-mode secret.
//!
//! Each sandbox gets its own CA (ECDSA P-256, `pathlen 0`), which the
//! sandbox is told to trust. When the proxy intercepts a connection it hands
//! the client a leaf certificate for the ClientHello's SNI, issued on demand
//! by [`SandboxCa`] and cached per host name. The CA key never leaves the
//! daemon; [`SandboxCa::key_pem`] exists so the daemon can persist it (0600)
//! and reload it with [`SandboxCa::from_pem`] after a restart.
//!
//! rcgen (built without `x509-parser`) cannot read a certificate back, so
//! [`SandboxCa::from_pem`] carries a tiny DER walker that extracts the
//! subject name and public key of the stored CA certificate: the subject is
//! rebuilt as rcgen parameters (and checked to re-encode byte for byte, since
//! chain building compares the leaf's issuer with the CA's subject exactly)
//! and the public key is checked against the stored private key.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use zeroize::Zeroizing;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a CA is valid (from one day before its creation).
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// How long a leaf is valid (from one day before its issue).
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Cached leaves older than this are issued again, well before they expire.
const LEAF_REISSUE_AFTER: Duration = Duration::from_secs(300 * 24 * 60 * 60);
/// Upper bound on cached leaves per CA; the cache is emptied when full.
const LEAF_CACHE_MAX: usize = 4096;

/// A sandbox's CA: certificate, private key, and the leaves issued so far.
pub struct SandboxCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: Zeroizing<String>,
    key: KeyPair,
    /// rcgen's view of the CA, used as the issuer of leaves. Only its
    /// subject name and key identifier method matter for signing; after
    /// [`SandboxCa::from_pem`] it is a re-signed twin of the stored
    /// certificate with the same subject and key.
    issuer: Certificate,
    /// Leaves by (lower-case) host name, with the time they were issued.
    leaves: Mutex<HashMap<String, (Instant, Arc<CertifiedKey>)>>,
}

impl fmt::Debug for SandboxCa {
    // Hand-written so that the key can never end up in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxCa").finish_non_exhaustive()
    }
}

/// Sets `params`' validity to [now - `back`, now - `back` + `length`].
fn set_validity(params: &mut CertificateParams, back: Duration, length: Duration) {
    // rcgen takes `time::OffsetDateTime`; build it from the Unix epoch so
    // this crate needs no direct dependency on `time`.
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().saturating_sub(back);
    let start = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = start;
    params.not_after = start + length;
}

/// The rustls crypto provider used for everything here: ring, chosen
/// explicitly so nothing depends on a process-wide default provider.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl SandboxCa {
    /// A new CA (ECDSA P-256) with CN = `common_name`, `basicConstraints`
    /// CA:true pathlen 0, key usage keyCertSign + cRLSign, valid from one day
    /// ago for ten years.
    pub fn generate(common_name: &str) -> anyhow::Result<SandboxCa> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating the CA key")?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        let params = ca_params(dn);
        let cert = params.clone().self_signed(&key).context("self-signing the CA certificate")?;
        let cert_pem = cert.pem();
        let cert_der = cert.der().clone();
        Ok(SandboxCa {
            cert_pem,
            cert_der,
            key_pem: Zeroizing::new(key.serialize_pem()),
            key,
            issuer: cert,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// Loads a CA stored with [`cert_pem`](Self::cert_pem) and
    /// [`key_pem`](Self::key_pem). Fails if the key does not belong to the
    /// certificate or the subject name uses encodings this module cannot
    /// reproduce exactly.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> anyhow::Result<SandboxCa> {
        let cert_der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .next()
            .ok_or_else(|| anyhow!("no certificate in the CA certificate PEM"))?
            .context("reading the CA certificate PEM")?;
        // Errors from rcgen/ring about key material say nothing about the
        // key's contents; keep them generic anyway.
        let key = KeyPair::from_pem(key_pem).map_err(|_| anyhow!("the CA key PEM is not a usable private key"))?;

        let parsed =
            der::parse_certificate(&cert_der).ok_or_else(|| anyhow!("the CA certificate is not well-formed DER"))?;
        if parsed.public_key != key.public_key_raw() {
            bail!("the CA key does not belong to the CA certificate");
        }
        let dn = der::distinguished_name(parsed.subject_contents)
            .ok_or_else(|| anyhow!("the CA certificate's subject name is not supported"))?;

        // Re-create rcgen's view of the issuer (same subject, same key) and
        // make sure its subject encodes exactly like the stored one, since
        // the leaves' issuer field must match the CA's subject byte for byte.
        let issuer = ca_params(dn).self_signed(&key).context("re-creating the CA issuer")?;
        let reparsed =
            der::parse_certificate(issuer.der()).ok_or_else(|| anyhow!("re-encoding the CA certificate failed"))?;
        if reparsed.subject != parsed.subject {
            bail!("the CA certificate's subject name cannot be reproduced exactly");
        }

        Ok(SandboxCa {
            cert_pem: cert_pem.to_string(),
            cert_der: cert_der.into_owned(),
            key_pem: Zeroizing::new(key_pem.to_string()),
            key,
            issuer,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate, PEM. This is what the sandbox trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 PEM. Store it 0600.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A rustls `ServerConfig` that presents, for the client's SNI, a leaf
    /// issued (and cached) on demand: SAN = that DNS name, EKU serverAuth,
    /// valid from one day ago for a year; the chain includes the CA. ALPN is
    /// `http/1.1` only. A ClientHello without SNI fails the handshake.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            // ring supports every default version; this cannot fail.
            .expect("ring supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(LeafResolver(Arc::clone(self))));
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    /// The (cached) leaf for `host`, issuing it if needed.
    pub fn leaf_for(&self, host: &str) -> anyhow::Result<Arc<CertifiedKey>> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() {
            bail!("empty host name");
        }
        {
            let leaves = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((issued, leaf)) = leaves.get(&host) {
                if issued.elapsed() < LEAF_REISSUE_AFTER {
                    return Ok(Arc::clone(leaf));
                }
            }
        }
        // Issue outside the lock; two racing handshakes for the same new
        // host may both issue, which is harmless.
        let leaf = self.issue_leaf(&host)?;
        let mut leaves = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
        if leaves.len() >= LEAF_CACHE_MAX {
            leaves.clear();
        }
        leaves.insert(host, (Instant::now(), Arc::clone(&leaf)));
        Ok(leaf)
    }

    /// Issues a leaf for `host` (already lower-case) with a fresh key.
    fn issue_leaf(&self, host: &str) -> anyhow::Result<Arc<CertifiedKey>> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating a leaf key")?;
        let mut params = CertificateParams::new(vec![host.to_string()])
            .with_context(|| format!("{host} is not a valid certificate name"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, DAY, DAY + LEAF_VALIDITY);
        let cert =
            params.signed_by(&key, &self.issuer, &self.key).with_context(|| format!("issuing a leaf for {host}"))?;
        let key_der = Zeroizing::new(key.serialize_der());
        let signing_key = rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
            PrivatePkcs8KeyDer::from(key_der.as_slice()),
        ))
        .map_err(|e| anyhow!("loading the leaf key for {host}: {e}"))?;
        Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone(), self.cert_der.clone()], signing_key)))
    }
}

/// The CA's certificate parameters for subject `dn`.
fn ca_params(dn: DistinguishedName) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, DAY, DAY + CA_VALIDITY);
    params
}

/// rustls certificate resolver: a leaf for the ClientHello's SNI.
struct LeafResolver(Arc<SandboxCa>);

impl fmt::Debug for LeafResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LeafResolver")
    }
}

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // No SNI: nothing to issue for, so the handshake fails.
        let name = client_hello.server_name()?;
        match self.0.leaf_for(name) {
            Ok(leaf) => Some(leaf),
            Err(e) => {
                tracing::info!(host = name, error = %e, "could not issue a leaf certificate");
                None
            }
        }
    }
}

/// Just enough DER to read a certificate's subject and public key.
mod der {
    use rcgen::{DistinguishedName, DnType, DnValue};

    pub(super) const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const INTEGER: u8 = 0x02;
    const BIT_STRING: u8 = 0x03;
    const OID: u8 = 0x06;
    const UTF8_STRING: u8 = 0x0c;
    const PRINTABLE_STRING: u8 = 0x13;
    const IA5_STRING: u8 = 0x16;
    const VERSION: u8 = 0xa0;

    /// The parts of a certificate this module needs.
    pub(super) struct Parsed<'a> {
        /// The whole subject Name TLV.
        pub subject: &'a [u8],
        /// The subject Name's contents (the RDN sequence).
        pub subject_contents: &'a [u8],
        /// The subject public key (BIT STRING contents without the
        /// unused-bits byte).
        pub public_key: &'a [u8],
    }

    /// One TLV split off its input: (tag, contents, whole TLV, rest).
    pub(super) type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

    /// Splits one TLV off `input`.
    pub(super) fn tlv(input: &[u8]) -> Option<Tlv<'_>> {
        let (&tag, after_tag) = input.split_first()?;
        if tag & 0x1f == 0x1f {
            return None; // high tag numbers do not occur in what we read
        }
        let (&first, mut rest) = after_tag.split_first()?;
        let len = if first < 0x80 {
            first as usize
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let mut len = 0usize;
            for &b in &rest[..n] {
                len = (len << 8) | b as usize;
            }
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        let header = input.len() - rest.len();
        Some((tag, &rest[..len], &input[..header + len], &rest[len..]))
    }

    /// Reads one TLV that must carry `want`: (contents, whole, rest).
    fn expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8], &[u8])> {
        let (tag, contents, whole, rest) = tlv(input)?;
        (tag == want).then_some((contents, whole, rest))
    }

    pub(super) fn parse_certificate(der: &[u8]) -> Option<Parsed<'_>> {
        let (cert, _, _) = expect(der, SEQUENCE)?;
        let (tbs, _, _) = expect(cert, SEQUENCE)?;
        let mut rest = tbs;
        if rest.first() == Some(&VERSION) {
            rest = expect(rest, VERSION)?.2;
        }
        rest = expect(rest, INTEGER)?.2; // serialNumber
        rest = expect(rest, SEQUENCE)?.2; // signature
        rest = expect(rest, SEQUENCE)?.2; // issuer
        rest = expect(rest, SEQUENCE)?.2; // validity
        let (subject_contents, subject, rest) = expect(rest, SEQUENCE)?;
        let (spki, _, _) = expect(rest, SEQUENCE)?;
        let (_, _, spki_rest) = expect(spki, SEQUENCE)?; // algorithm
        let (bits, _, _) = expect(spki_rest, BIT_STRING)?;
        let (&unused, public_key) = bits.split_first()?;
        if unused != 0 {
            return None;
        }
        Some(Parsed { subject, subject_contents, public_key })
    }

    /// Decodes an OID's contents into its arcs.
    fn oid_arcs(contents: &[u8]) -> Option<Vec<u64>> {
        let mut arcs = Vec::new();
        let mut value: u64 = 0;
        let mut in_arc = false;
        for &b in contents {
            value = value.checked_mul(128)? | u64::from(b & 0x7f);
            in_arc = b & 0x80 != 0;
            if !in_arc {
                if arcs.is_empty() {
                    let first = (value / 40).min(2);
                    arcs.push(first);
                    arcs.push(value - first * 40);
                } else {
                    arcs.push(value);
                }
                value = 0;
            }
        }
        (!in_arc && !arcs.is_empty()).then_some(arcs)
    }

    /// Rebuilds a subject (RDN sequence contents) as rcgen's
    /// `DistinguishedName`. Only single-attribute RDNs with distinct types
    /// and UTF8/Printable/IA5 strings are supported (what rcgen writes).
    pub(super) fn distinguished_name(mut rdns: &[u8]) -> Option<DistinguishedName> {
        let mut dn = DistinguishedName::new();
        let mut seen: Vec<DnType> = Vec::new();
        while !rdns.is_empty() {
            let (set, _, rest) = expect(rdns, SET)?;
            rdns = rest;
            let (attr, _, set_rest) = expect(set, SEQUENCE)?;
            if !set_rest.is_empty() {
                return None; // multi-valued RDN
            }
            let (oid, _, attr_rest) = expect(attr, OID)?;
            let (tag, value, _, tail) = tlv(attr_rest)?;
            if !tail.is_empty() {
                return None;
            }
            let ty = DnType::from_oid(&oid_arcs(oid)?);
            let text = std::str::from_utf8(value).ok()?.to_string();
            let value = match tag {
                UTF8_STRING => DnValue::Utf8String(text),
                PRINTABLE_STRING => DnValue::PrintableString(text.try_into().ok()?),
                IA5_STRING => DnValue::Ia5String(text.try_into().ok()?),
                _ => return None,
            };
            if seen.contains(&ty) {
                return None; // rcgen keeps one value per type
            }
            seen.push(ty.clone());
            dn.push(ty, value);
        }
        Some(dn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A rustls client config trusting exactly `ca_pem`.
    fn client_trusting(ca_pem: &str) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    /// Runs a TLS handshake between a client trusting `trust_pem` (asking for
    /// `name`) and `ca.server_config()` over an in-memory pipe, then sends a
    /// byte each way. Returns the client's error, if any.
    async fn handshake(
        ca: &Arc<SandboxCa>,
        trust_pem: &str,
        name: ServerName<'static>,
    ) -> Result<Option<Vec<u8>>, std::io::Error> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config());
        let server = tokio::spawn(async move {
            let mut tls = acceptor.accept(server_io).await?;
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await?;
            tls.write_all(&b).await?;
            tls.flush().await?;
            Ok::<_, std::io::Error>(())
        });
        let connector = tokio_rustls::TlsConnector::from(client_trusting(trust_pem));
        let result = async {
            let mut tls = connector.connect(name, client_io).await?;
            tls.write_all(b"x").await?;
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await?;
            Ok(tls.get_ref().1.alpn_protocol().map(|p| p.to_vec()))
        }
        .await;
        let _ = server.await;
        result
    }

    #[tokio::test]
    async fn ca_leaf_for_sni_verifies_against_the_ca() {
        let ca = Arc::new(SandboxCa::generate("spinup sandbox test CA").unwrap());
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(ca.key_pem().contains("PRIVATE KEY"));
        let name = ServerName::try_from("api.example.com").unwrap();
        let alpn = handshake(&ca, ca.cert_pem(), name).await.unwrap();
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        // The leaf is cached per host name.
        let a = ca.leaf_for("api.example.com").unwrap();
        let b = ca.leaf_for("API.example.com.").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[tokio::test]
    async fn ca_handshake_without_sni_fails() {
        let ca = Arc::new(SandboxCa::generate("spinup sandbox test CA").unwrap());
        // rustls sends no SNI for an IP address.
        let name = ServerName::try_from("127.0.0.1").unwrap();
        assert!(handshake(&ca, ca.cert_pem(), name).await.is_err());
    }

    #[tokio::test]
    async fn ca_leaf_rejected_by_another_ca() {
        let ca = Arc::new(SandboxCa::generate("spinup sandbox test CA").unwrap());
        let other = SandboxCa::generate("spinup sandbox test CA").unwrap();
        let name = ServerName::try_from("api.example.com").unwrap();
        assert!(handshake(&ca, other.cert_pem(), name).await.is_err());
    }

    #[tokio::test]
    async fn ca_from_pem_round_trips() {
        let ca = SandboxCa::generate("spinup sandbox 0123").unwrap();
        let loaded = Arc::new(SandboxCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap());
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(loaded.key_pem(), ca.key_pem());
        // Leaves issued by the reloaded CA chain to the original certificate.
        let name = ServerName::try_from("echo.test").unwrap();
        handshake(&loaded, ca.cert_pem(), name).await.unwrap();
    }

    #[test]
    fn ca_from_pem_rejects_a_foreign_key_and_garbage() {
        let a = SandboxCa::generate("a").unwrap();
        let b = SandboxCa::generate("b").unwrap();
        let err = SandboxCa::from_pem(a.cert_pem(), b.key_pem()).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        assert!(SandboxCa::from_pem("garbage", a.key_pem()).is_err());
        assert!(SandboxCa::from_pem(a.cert_pem(), "garbage").is_err());
        // The error must not echo the key.
        let err = format!(
            "{:#}",
            SandboxCa::from_pem(a.cert_pem(), "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .unwrap_err()
        );
        assert!(!err.contains("AAAA"), "{err}");
        assert_eq!(format!("{a:?}"), "SandboxCa { .. }");
    }

    #[test]
    fn ca_der_walker_survives_garbage() {
        let a = SandboxCa::generate("a").unwrap();
        let der = a.cert_der().to_vec();
        assert!(der::parse_certificate(&der).is_some());
        for cut in 0..der.len() {
            assert!(der::parse_certificate(&der[..cut]).is_none());
        }
        let mut flipped = der.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = der::parse_certificate(&flipped).map(|p| der::distinguished_name(p.subject_contents));
            flipped[i] ^= 0xff;
        }
        assert!(der::tlv(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(der::tlv(&[0x30, 0x85, 0, 0, 0, 0, 1]).is_none());
        assert_eq!(der::SEQUENCE, 0x30);
    }
}
