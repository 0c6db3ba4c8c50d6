//! What `sslmode` does with this build's PostgreSQL driver (sqlx 0.8 on rustls), shown against a
//! server in the middle that holds a certificate of its own and, once the client accepts it,
//! asks for the password in clear text, as anyone on the path could.
//!
//! The README's advice rests on it: `require` encrypts but trusts any certificate, so the
//! password goes to whoever answers; `verify-full` checks the chain and the host name;
//! `sslrootcert` adds a CA to the trusted roots (and `require` ignores it, unlike libpq).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

const PASSWORD: &str = "litellm-database-password";

/// A CA of our own and a server certificate it issued for `localhost`.
struct Pki {
    ca_pem: PathBuf,
    acceptor: TlsAcceptor,
}

fn pki(dir: &Path, name: &str) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let ca_pem = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&ca_pem, ca.pem()).unwrap();

    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .unwrap();
    Pki {
        ca_pem,
        acceptor: TlsAcceptor::from(Arc::new(config)),
    }
}

/// Answers one connection as a TLS PostgreSQL server would, then asks for the password in
/// clear text. Returns the password, if the client trusted the certificate and sent it.
async fn man_in_the_middle(listener: TcpListener, acceptor: TlsAcceptor) -> Option<String> {
    let (mut tcp, _) = listener.accept().await.ok()?;
    // SSLRequest: length 8, code 80877103; "S": go ahead with TLS.
    let mut ssl_request = [0u8; 8];
    tcp.read_exact(&mut ssl_request).await.ok()?;
    assert_eq!(ssl_request, [0, 0, 0, 8, 4, 210, 22, 47]);
    tcp.write_all(b"S").await.ok()?;
    // Fails when the client refuses the certificate.
    let mut tls = acceptor.accept(tcp).await.ok()?;
    // StartupMessage: length (itself included), then protocol, user, database.
    let length = tls.read_u32().await.ok()?;
    let mut startup = vec![0u8; usize::try_from(length).ok()?.checked_sub(4)?];
    tls.read_exact(&mut startup).await.ok()?;
    // AuthenticationCleartextPassword.
    tls.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await.ok()?;
    tls.flush().await.ok()?;
    // PasswordMessage: 'p', length, the password and a NUL.
    if tls.read_u8().await.ok()? != b'p' {
        return None;
    }
    let length = tls.read_u32().await.ok()?;
    let mut password = vec![0u8; usize::try_from(length).ok()?.checked_sub(4)?];
    tls.read_exact(&mut password).await.ok()?;
    password.pop();
    // End the session the way a server refusing the password would.
    let mut error = vec![b'E', 0, 0, 0, 0];
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "28P01"),
        (b'M', "no"),
    ] {
        error.push(field);
        error.extend_from_slice(value.as_bytes());
        error.push(0);
    }
    error.push(0);
    let error_length = u32::try_from(error.len() - 1).unwrap().to_be_bytes();
    error[1..5].copy_from_slice(&error_length);
    let _ = tls.write_all(&error).await;
    let _ = tls.shutdown().await;
    String::from_utf8(password).ok()
}

/// Connects to `host` with these URL parameters, the man in the middle answering: what it
/// learnt of the password.
async fn password_seen_by_the_middle(pki: &Pki, host: &str, parameters: &str) -> Option<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let middle = tokio::spawn(man_in_the_middle(listener, pki.acceptor.clone()));
    let url = format!("postgres://litellm:{PASSWORD}@{host}:{port}/litellm?{parameters}");
    let connected = tokio::time::timeout(
        Duration::from_secs(20),
        migration::database::connect(&url, |options| {
            options.connect_timeout(Duration::from_secs(5));
        }),
    )
    .await
    .expect("connecting ends");
    // The middle never lets anyone in; the error never shows the password.
    let error = connected.expect_err("the man in the middle let nobody in");
    assert!(!error.contains(PASSWORD), "{error}");
    tokio::time::timeout(Duration::from_secs(20), middle)
        .await
        .expect("the man in the middle is done")
        .unwrap()
}

fn temporary_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn require_hands_the_password_to_any_certificate() {
    let dir = temporary_dir();
    let middle = pki(&dir, "middle");
    let password = password_seen_by_the_middle(&middle, "localhost", "sslmode=require").await;
    assert_eq!(password.as_deref(), Some(PASSWORD));
    // A root certificate does not make `require` verify anything (it does in libpq).
    let other = pki(&dir, "other");
    let parameters = format!("sslmode=require&sslrootcert={}", other.ca_pem.display());
    let password = password_seen_by_the_middle(&middle, "localhost", &parameters).await;
    assert_eq!(password.as_deref(), Some(PASSWORD));
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_from_an_unknown_ca() {
    let dir = temporary_dir();
    let middle = pki(&dir, "unknown");
    let password = password_seen_by_the_middle(&middle, "localhost", "sslmode=verify-full").await;
    assert_eq!(password, None);
}

#[tokio::test]
async fn verify_full_trusts_the_ca_sslrootcert_names_for_the_right_host_only() {
    let dir = temporary_dir();
    let server = pki(&dir, "private");
    let trusted = format!(
        "sslmode=verify-full&sslrootcert={}",
        server.ca_pem.display()
    );
    // The certificate is the private CA's, for localhost: trusted.
    let password = password_seen_by_the_middle(&server, "localhost", &trusted).await;
    assert_eq!(password.as_deref(), Some(PASSWORD));
    // The same certificate for another name (127.0.0.1): refused.
    let password = password_seen_by_the_middle(&server, "127.0.0.1", &trusted).await;
    assert_eq!(password, None);
}
