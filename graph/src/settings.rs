//! Which app registration reads Graph, with which credential, at which endpoints: from the Azure
//! SDK's environment names, with LiteLLM's `MICROSOFT_*` names accepted where those are unset.

use std::path::PathBuf;

use entra_sync_core::settings::{Tenant, secret};
use reqwest::Url;
use secrecy::SecretString;

use super::credential::Credential;
use crate::error::{Error, Result};

#[derive(Clone, Debug, clap::Args)]
pub struct GraphArgs {
    #[arg(long, env = "AZURE_TENANT_ID")]
    pub azure_tenant_id: Option<String>,
    #[arg(long, env = "MICROSOFT_TENANT", hide = true)]
    pub microsoft_tenant: Option<String>,
    #[arg(long, env = "AZURE_CLIENT_ID")]
    pub azure_client_id: Option<String>,
    #[arg(long, env = "MICROSOFT_CLIENT_ID", hide = true)]
    pub microsoft_client_id: Option<String>,
    #[arg(long, env = "AZURE_CLIENT_SECRET", hide_env_values = true, value_parser = secret)]
    pub azure_client_secret: Option<SecretString>,
    #[arg(long, env = "MICROSOFT_CLIENT_SECRET", hide = true, hide_env_values = true, value_parser = secret)]
    pub microsoft_client_secret: Option<SecretString>,
    /// A PEM file holding the app's certificate and its private key.
    #[arg(long, env = "AZURE_CLIENT_CERTIFICATE_PATH")]
    pub azure_client_certificate_path: Option<PathBuf>,
    /// Workload identity: a file holding the federated assertion, re-read on every refresh.
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE")]
    pub azure_federated_token_file: Option<PathBuf>,
    #[arg(
        long,
        env = "AZURE_AUTHORITY_HOST",
        default_value = "https://login.microsoftonline.com"
    )]
    pub azure_authority_host: String,
    #[arg(
        long,
        env = "MICROSOFT_GRAPH_ENDPOINT",
        default_value = "https://graph.microsoft.com/v1.0"
    )]
    pub microsoft_graph_endpoint: String,
    /// Object id of LiteLLM's enterprise app; unset: looked up from the client id.
    #[arg(long, env = "MICROSOFT_SERVICE_PRINCIPAL_ID")]
    pub microsoft_service_principal_id: Option<String>,
}

/// Validated Graph settings.
#[derive(Clone, Debug)]
pub struct GraphConfig {
    pub tenant_id: String,
    pub client_id: String,
    pub credential: Credential,
    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    pub token_url: Url,
    /// Graph's base, e.g. `https://graph.microsoft.com/v1.0`, without a trailing slash.
    pub graph_endpoint: String,
    pub service_principal_id: Option<String>,
    pub retry: super::retry::RetryPolicy,
}

impl GraphArgs {
    /// Checks the settings and chooses the credential: a client secret, else a certificate, else
    /// a federated token file (the Azure SDK's EnvironmentCredential order).
    pub fn resolve(self) -> Result<GraphConfig> {
        let (name, tenant) = [
            ("AZURE_TENANT_ID", self.azure_tenant_id),
            ("MICROSOFT_TENANT", self.microsoft_tenant),
        ]
        .into_iter()
        .find_map(|(name, value)| value.filter(|t| !t.trim().is_empty()).map(|t| (name, t)))
        .ok_or_else(|| {
            Error::Settings("AZURE_TENANT_ID (or MICROSOFT_TENANT) is required".into())
        })?;
        // It goes into the token endpoint's path: nothing but an id or a domain name.
        let tenant_id = Tenant::parse(name, &tenant)
            .map_err(Error::Settings)?
            .as_str()
            .to_owned();
        let client_id = self
            .azure_client_id
            .or(self.microsoft_client_id)
            .filter(|c| !c.trim().is_empty())
            .ok_or_else(|| {
                Error::Settings("AZURE_CLIENT_ID (or MICROSOFT_CLIENT_ID) is required".into())
            })?;
        let credential =
            if let Some(secret) = self.azure_client_secret.or(self.microsoft_client_secret) {
                Credential::Secret(secret)
            } else if let Some(path) = self.azure_client_certificate_path {
                Credential::certificate_from_pem_file(&path)?
            } else if let Some(path) = self.azure_federated_token_file {
                Credential::FederatedTokenFile(path)
            } else {
                return Err(Error::Settings(
                "no Graph credential: set AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH or \
                 AZURE_FEDERATED_TOKEN_FILE"
                    .into(),
            ));
            };
        let authority = checked_url("AZURE_AUTHORITY_HOST", &self.azure_authority_host)?;
        let token_url = authority
            .join(&format!("{tenant_id}/oauth2/v2.0/token"))
            .map_err(|e| Error::Settings(format!("AZURE_TENANT_ID {tenant_id:?}: {e}")))?;
        let graph = checked_url("MICROSOFT_GRAPH_ENDPOINT", &self.microsoft_graph_endpoint)?;
        Ok(GraphConfig {
            tenant_id,
            client_id,
            credential,
            token_url,
            graph_endpoint: graph.as_str().trim_end_matches('/').to_owned(),
            service_principal_id: self.microsoft_service_principal_id,
            retry: super::retry::RetryPolicy::default(),
        })
    }
}

/// An https URL, or http on a loopback address (graph-sim); ends with a slash so joins append.
pub fn checked_url(name: &str, value: &str) -> Result<Url> {
    let mut url = Url::parse(value.trim())
        .map_err(|e| Error::Settings(format!("{name} {value:?} is not a URL: {e}")))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(host)) => host == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => {
            return Err(Error::Settings(format!(
                "{name} must be an https URL (plain http only on a loopback address): {value:?}"
            )));
        }
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_or_loopback_http_only() {
        assert!(checked_url("X", "https://login.microsoftonline.com").is_ok());
        assert!(checked_url("X", "http://127.0.0.1:8081").is_ok());
        assert!(checked_url("X", "http://localhost:9/v1.0").is_ok());
        assert!(checked_url("X", "http://[::1]:9").is_ok());
        let e = checked_url("MICROSOFT_GRAPH_ENDPOINT", "http://graph.example.com").unwrap_err();
        assert!(e.to_string().contains("MICROSOFT_GRAPH_ENDPOINT"), "{e}");
        assert!(checked_url("X", "ftp://127.0.0.1").is_err());
        assert!(checked_url("X", "not a url").is_err());
    }
}

#[cfg(test)]
mod resolve_tests {
    use super::*;

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

    fn args() -> GraphArgs {
        GraphArgs {
            azure_tenant_id: None,
            microsoft_tenant: None,
            azure_client_id: None,
            microsoft_client_id: None,
            azure_client_secret: None,
            microsoft_client_secret: None,
            azure_client_certificate_path: None,
            azure_federated_token_file: None,
            azure_authority_host: "https://login.microsoftonline.com".into(),
            microsoft_graph_endpoint: "https://graph.microsoft.com/v1.0".into(),
            microsoft_service_principal_id: None,
        }
    }

    #[test]
    fn litellm_names_are_accepted_where_azure_names_are_unset() {
        let config = GraphArgs {
            microsoft_tenant: Some("contoso.onmicrosoft.com".into()),
            microsoft_client_id: Some("app".into()),
            microsoft_client_secret: Some("s".to_owned().into()),
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(config.tenant_id, "contoso.onmicrosoft.com");
        assert_eq!(config.client_id, "app");
        assert!(matches!(config.credential, Credential::Secret(_)));
        assert_eq!(
            config.token_url.as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(config.graph_endpoint, "https://graph.microsoft.com/v1.0");
    }

    #[test]
    fn azure_names_win_and_a_secret_comes_before_a_token_file() {
        let config = GraphArgs {
            azure_tenant_id: Some(TENANT.into()),
            microsoft_tenant: Some("m.example".into()),
            azure_client_id: Some("client".into()),
            azure_client_secret: Some("s".to_owned().into()),
            azure_federated_token_file: Some("/var/run/token".into()),
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(config.tenant_id, TENANT);
        assert!(matches!(config.credential, Credential::Secret(_)));
        // Without a secret, the federated token file.
        let config = GraphArgs {
            azure_tenant_id: Some(TENANT.into()),
            azure_client_id: Some("client".into()),
            azure_federated_token_file: Some("/var/run/token".into()),
            ..args()
        }
        .resolve()
        .unwrap();
        assert!(matches!(
            config.credential,
            Credential::FederatedTokenFile(_)
        ));
    }

    #[test]
    fn missing_settings_are_named() {
        let e = args().resolve().unwrap_err().to_string();
        assert!(e.contains("AZURE_TENANT_ID"), "{e}");
        let e = GraphArgs {
            azure_tenant_id: Some(TENANT.into()),
            ..args()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(e.contains("AZURE_CLIENT_ID"), "{e}");
        let e = GraphArgs {
            azure_tenant_id: Some(TENANT.into()),
            azure_client_id: Some("c".into()),
            ..args()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(e.contains("AZURE_CLIENT_SECRET"), "{e}");
        let e = GraphArgs {
            azure_tenant_id: Some(TENANT.into()),
            azure_client_id: Some("c".into()),
            azure_client_certificate_path: Some("/nonexistent.pem".into()),
            ..args()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent.pem"), "{e}");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let config = GraphArgs {
            azure_tenant_id: Some(TENANT.into()),
            azure_client_id: Some("c".into()),
            azure_client_secret: Some("very-secret-value".to_owned().into()),
            ..args()
        }
        .resolve()
        .unwrap();
        assert!(!format!("{config:?}").contains("very-secret-value"));
    }

    #[test]
    fn a_tenant_that_is_neither_an_id_nor_a_domain_is_refused_by_name() {
        for (tenant, name) in [
            ("contoso.com/../../common", "AZURE_TENANT_ID"),
            ("evil.example?x=", "AZURE_TENANT_ID"),
            ("common", "AZURE_TENANT_ID"),
        ] {
            let e = GraphArgs {
                azure_tenant_id: Some(tenant.into()),
                azure_client_id: Some("c".into()),
                azure_client_secret: Some("s".to_owned().into()),
                ..args()
            }
            .resolve()
            .unwrap_err()
            .to_string();
            assert!(
                e.contains(name) && e.contains("neither a tenant id"),
                "{tenant}: {e}"
            );
        }
        let e = GraphArgs {
            microsoft_tenant: Some("tenant/x".into()),
            azure_client_id: Some("c".into()),
            azure_client_secret: Some("s".to_owned().into()),
            ..args()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(e.contains("MICROSOFT_TENANT"), "{e}");
    }
}
