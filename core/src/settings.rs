//! Settings the webhook and the worker both read, defined once so that their defaults can never
//! drift apart (a webhook and a worker on different streams would lose every notification).

use secrecy::SecretString;

/// The Redis stream the webhook appends to and the workers read.
#[derive(Clone, Debug, clap::Args)]
pub struct StreamArgs {
    /// Redis holding the notification stream.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379", hide_env_values = true, value_parser = secret)]
    pub redis_url: SecretString,

    /// The stream the webhook appends to and the workers read.
    #[arg(
        long,
        env = "ENTRA_SYNC_STREAM",
        default_value = "entra-sync:notifications"
    )]
    pub stream: String,
}

/// Reads a command-line or environment value as a secret: kept out of `Debug` output and logs.
/// An empty value is refused, with the setting's name, rather than taken for a secret.
pub fn secret(value: &str) -> Result<SecretString, String> {
    if value.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(SecretString::from(value.to_owned()))
}

/// The fewest characters a clientState may have: 32 random characters cannot be guessed, and a
/// clientState is all that tells Graph's notifications from anyone else's posts to the webhook.
pub const CLIENT_STATE_MIN_CHARS: usize = 32;
/// The most Graph accepts in a subscription's clientState.
pub const CLIENT_STATE_MAX_CHARS: usize = 128;

/// Checks the clientState secret held in the setting `name`: 32 to 128 characters. The error
/// names the setting and says how to make one; it never holds the value, nor its length.
pub fn check_client_state(name: &str, value: &SecretString) -> Result<(), String> {
    use secrecy::ExposeSecret;
    let chars = value.expose_secret().chars().count();
    let problem = if chars < CLIENT_STATE_MIN_CHARS {
        format!(
            "is shorter than {CLIENT_STATE_MIN_CHARS} characters, short enough to be guessed by \
             anyone who can reach the webhook"
        )
    } else if chars > CLIENT_STATE_MAX_CHARS {
        format!("is longer than {CLIENT_STATE_MAX_CHARS} characters, Graph's limit")
    } else {
        return Ok(());
    };
    Err(format!(
        "{name} {problem}: use {CLIENT_STATE_MIN_CHARS} to {CLIENT_STATE_MAX_CHARS} random \
         characters, e.g. `openssl rand -hex 32`"
    ))
}

/// Whether `text` is a GUID as Graph writes object, tenant and subscription ids: 32 hex digits
/// in groups of 8-4-4-4-12, nothing else (no braces, no spaces).
pub fn is_guid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(at, byte)| match at {
            8 | 13 | 18 | 23 => *byte == b'-',
            _ => byte.is_ascii_hexdigit(),
        })
}

/// A tenant as `AZURE_TENANT_ID` (or `MICROSOFT_TENANT`) names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tenant {
    /// The tenant's id, in lower case.
    Id(String),
    /// One of the tenant's verified domain names, e.g. `contoso.onmicrosoft.com`.
    Domain(String),
}

impl Tenant {
    /// Reads the value of the setting `name`: a GUID or a domain name, which is all the token
    /// endpoint's URL (`{authority}/{tenant}/oauth2/v2.0/token`) may carry. The error names the
    /// setting.
    pub fn parse(name: &str, value: &str) -> Result<Self, String> {
        let value = value.trim();
        if is_guid(value) {
            return Ok(Self::Id(value.to_ascii_lowercase()));
        }
        if is_domain_name(value) {
            return Ok(Self::Domain(value.to_ascii_lowercase()));
        }
        Err(format!(
            "{name} {value:?} is neither a tenant id (a GUID such as \
             72f988bf-86f1-41af-91ab-2d7cd011db47) nor a domain name (such as \
             contoso.onmicrosoft.com)"
        ))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Id(text) | Self::Domain(text) => text,
        }
    }
}

/// A DNS name of two labels or more, each of letters, digits and inner hyphens.
fn is_domain_name(text: &str) -> bool {
    text.len() <= 253
        && text.contains('.')
        && text.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    #[test]
    fn a_client_state_has_32_to_128_characters_and_errors_never_show_it() {
        let check = |value: &str| {
            super::check_client_state("ENTRA_SYNC_CLIENT_STATE", &value.to_owned().into())
        };
        assert!(check(&"a".repeat(32)).is_ok());
        assert!(check(&"a".repeat(128)).is_ok());
        // Characters, not bytes.
        assert!(check(&"é".repeat(32)).is_ok());
        for value in ["short-s3cr3t".to_owned(), "b".repeat(31), "c".repeat(129)] {
            let error = check(&value).unwrap_err();
            assert!(error.starts_with("ENTRA_SYNC_CLIENT_STATE "), "{error}");
            assert!(error.contains("32 to 128"), "{error}");
            assert!(!error.contains(&value), "{error}");
        }
        assert!(
            check(&"b".repeat(31))
                .unwrap_err()
                .contains("shorter than 32")
        );
        assert!(
            check(&"c".repeat(129))
                .unwrap_err()
                .contains("Graph's limit")
        );
    }

    #[test]
    fn a_tenant_is_a_guid_or_a_domain_name_and_nothing_a_url_could_misread() {
        use super::Tenant;
        assert_eq!(
            Tenant::parse("AZURE_TENANT_ID", " 72F988BF-86f1-41af-91ab-2d7cd011db47 "),
            Ok(Tenant::Id("72f988bf-86f1-41af-91ab-2d7cd011db47".into()))
        );
        assert_eq!(
            Tenant::parse("AZURE_TENANT_ID", "Contoso.onmicrosoft.com"),
            Ok(Tenant::Domain("contoso.onmicrosoft.com".into()))
        );
        assert!(Tenant::parse("X", "login-test.contoso-1.example").is_ok());
        for bad in [
            "",
            "tenant",
            "common",
            "{72f988bf-86f1-41af-91ab-2d7cd011db47}",
            "72f988bf86f141af91ab2d7cd011db47",
            "72f988bf-86f1-41af-91ab-2d7cd011db4g",
            "contoso.com/../../evil",
            "contoso.com?x=1",
            "contoso.com#",
            "evil.example/oauth2",
            "user@contoso.com",
            "-contoso.com",
            "contoso-.com",
            "contoso..com",
            "contoso.com.",
            "con toso.com",
            "%2e%2e.com",
        ] {
            let error = Tenant::parse("MICROSOFT_TENANT", bad).unwrap_err();
            assert!(error.starts_with("MICROSOFT_TENANT "), "{bad}: {error}");
        }
    }

    #[test]
    fn a_secret_is_kept_and_an_empty_one_refused() {
        assert_eq!(super::secret("s3cr3t").unwrap().expose_secret(), "s3cr3t");
        assert!(super::secret("").is_err());
        assert!(super::secret("   ").is_err());
    }

    #[test]
    fn both_binaries_read_the_same_stream_by_default() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            stream: super::StreamArgs,
        }
        let cli = Cli::parse_from(["test"]);
        assert_eq!(cli.stream.stream, "entra-sync:notifications");
        assert_eq!(
            cli.stream.redis_url.expose_secret(),
            "redis://127.0.0.1:6379"
        );
    }
}
