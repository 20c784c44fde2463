//! Certificates made at run time for the TLS tests: a CA, certificates it
//! signs (server, client, expired, for another host), and an unrelated CA
//! with a server certificate of its own. All written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, SanType,
};
use time::{Duration, OffsetDateTime};

pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki { dir };
        let ca = pki.ca("ca", "QProxy test CA");
        let other = pki.ca("other-ca", "Some other CA");
        let now = OffsetDateTime::now_utc();
        let local = ["localhost", "127.0.0.1"];
        let server = ExtendedKeyUsagePurpose::ServerAuth;
        let client = ExtendedKeyUsagePurpose::ClientAuth;
        pki.leaf(
            "server",
            &ca,
            &local,
            server.clone(),
            now + Duration::days(1),
        );
        pki.leaf("client", &ca, &["zone-b"], client, now + Duration::days(1));
        pki.leaf(
            "expired",
            &ca,
            &local,
            server.clone(),
            now - Duration::days(1),
        );
        pki.leaf(
            "elsewhere",
            &ca,
            &["elsewhere.example"],
            server.clone(),
            now + Duration::days(1),
        );
        pki.leaf("untrusted", &other, &local, server, now + Duration::days(1));
        pki
    }

    /// `<name>.pem` (certificate) or `<name>.key`.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The path as a string, for JSON configs.
    pub fn file(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }

    fn write(&self, name: &str, cert: &str, key: &KeyPair) {
        std::fs::write(self.path(&format!("{name}.pem")), cert).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    fn ca(&self, name: &str, common_name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate().unwrap();
        let key_pem = key.serialize_pem();
        let issuer = CertifiedIssuer::self_signed(params, key).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), issuer.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key_pem).unwrap();
        issuer
    }

    fn leaf(
        &self,
        name: &str,
        issuer: &Issuer<'_, KeyPair>,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        not_after: OffsetDateTime,
    ) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        for n in names {
            params.subject_alt_names.push(match n.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().unwrap()),
            });
        }
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        params.not_before = not_after - Duration::days(30);
        params.not_after = not_after;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        self.write(name, &cert.pem(), &key);
    }

    /// A listener acceptor for `<name>.pem`/`.key`, e.g. for a test
    /// downstream; with `client_ca`, client certificates are required.
    pub fn acceptor(&self, name: &str, client_ca: Option<&str>) -> qproxy::tls::TlsAcceptor {
        let cert = self.path(&format!("{name}.pem"));
        let key = self.path(&format!("{name}.key"));
        let ca = client_ca.map(|c| self.path(&format!("{c}.pem")));
        qproxy::tls::acceptor(
            qproxy::tls::Identity {
                cert: ("cert", &cert),
                key: ("key", &key),
            },
            ca.as_deref().map(|p: &Path| ("client_ca", p)),
            &[b"http/1.1"],
        )
        .expect("test certificates load")
    }
}
