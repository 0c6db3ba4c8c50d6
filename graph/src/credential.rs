//! The app registration's credential, and the token request form it produces.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::error::{Error, Result};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Assertions live five minutes; Entra accepts at most ten.
const ASSERTION_LIFETIME_SECONDS: i64 = 300;

#[derive(Clone)]
pub enum Credential {
    Secret(SecretString),
    /// A certificate registered on the app and its private key.
    Certificate {
        /// `x5t#S256`: base64url of the SHA-256 of the certificate's DER.
        thumbprint: String,
        key: EncodingKey,
    },
    /// Workload identity federation: the file is rewritten by the platform, so it is read anew
    /// for every token.
    FederatedTokenFile(PathBuf),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret(_) => f.write_str("Secret([redacted])"),
            Self::Certificate { thumbprint, .. } => {
                write!(f, "Certificate {{ x5t#S256: {thumbprint} }}")
            }
            Self::FederatedTokenFile(path) => write!(f, "FederatedTokenFile({})", path.display()),
        }
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: i64,
    iat: i64,
    exp: i64,
}

impl Credential {
    /// Reads a PEM file holding the certificate and its RSA private key (PKCS#1 or PKCS#8), as
    /// the Azure SDKs expect for `AZURE_CLIENT_CERTIFICATE_PATH`.
    pub fn certificate_from_pem_file(path: &Path) -> Result<Self> {
        let text = std::fs::read(path).map_err(|e| {
            Error::Credential(format!(
                "AZURE_CLIENT_CERTIFICATE_PATH {}: {e}",
                path.display()
            ))
        })?;
        Self::certificate_from_pem(&text).map_err(|e| {
            Error::Credential(format!(
                "AZURE_CLIENT_CERTIFICATE_PATH {}: {e}",
                path.display()
            ))
        })
    }

    pub fn certificate_from_pem(text: &[u8]) -> std::result::Result<Self, String> {
        let blocks = pem::parse_many(text).map_err(|e| format!("not PEM: {e}"))?;
        let certificate = blocks
            .iter()
            .find(|b| b.tag() == "CERTIFICATE")
            .ok_or("no CERTIFICATE block")?;
        let key = blocks
            .iter()
            .find(|b| b.tag() == "PRIVATE KEY" || b.tag() == "RSA PRIVATE KEY")
            .ok_or("no PRIVATE KEY block")?;
        let key = EncodingKey::from_rsa_pem(pem::encode(key).as_bytes())
            .map_err(|e| format!("the private key is not an RSA key: {e}"))?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, certificate.contents());
        Ok(Self::Certificate {
            thumbprint: URL_SAFE_NO_PAD.encode(digest.as_ref()),
            key,
        })
    }

    /// The credential part of a client-credentials token request.
    pub(super) fn form(
        &self,
        token_url: &str,
        client_id: &str,
        now_unix: i64,
    ) -> Result<Vec<(&'static str, String)>> {
        match self {
            Self::Secret(secret) => Ok(vec![("client_secret", secret.expose_secret().to_owned())]),
            Self::Certificate { thumbprint, key } => {
                let mut header = Header::new(Algorithm::RS256);
                header.x5t_s256 = Some(thumbprint.clone());
                let claims = AssertionClaims {
                    aud: token_url,
                    iss: client_id,
                    sub: client_id,
                    jti: uuid::Uuid::new_v4().to_string(),
                    nbf: now_unix,
                    iat: now_unix,
                    exp: now_unix + ASSERTION_LIFETIME_SECONDS,
                };
                let assertion = jsonwebtoken::encode(&header, &claims, key).map_err(|e| {
                    Error::Credential(format!("cannot sign the client assertion: {e}"))
                })?;
                Ok(vec![
                    ("client_assertion_type", JWT_BEARER.to_owned()),
                    ("client_assertion", assertion),
                ])
            }
            Self::FederatedTokenFile(path) => {
                let assertion = std::fs::read_to_string(path).map_err(|e| {
                    Error::Credential(format!(
                        "AZURE_FEDERATED_TOKEN_FILE {}: {e}",
                        path.display()
                    ))
                })?;
                Ok(vec![
                    ("client_assertion_type", JWT_BEARER.to_owned()),
                    ("client_assertion", assertion.trim().to_owned()),
                ])
            }
        }
    }
}
