//! Connecting to `DATABASE_URL` without its password ever reaching an error or a log.
//!
//! sea-orm quotes a URL it cannot parse in its error ("The connection string '...' cannot be
//! parsed."), password included, and a driver may one day quote parts of it too. So the URL is
//! checked here first, with errors that quote nothing of it, and whatever error connecting
//! gives has the URL and its password cut out before anyone sees it.

use sea_orm_migration::sea_orm::{ConnectOptions, Database, DatabaseConnection};

/// What stands in for a secret in an error.
const REDACTED: &str = "***";

/// Connects to the database `options` name. The error says what went wrong, naming
/// `DATABASE_URL`, and never contains the URL's password.
pub async fn connect(options: ConnectOptions) -> Result<DatabaseConnection, String> {
    let secrets = checked_secrets(options.get_url())?;
    Database::connect(options).await.map_err(|error| {
        format!(
            "cannot connect to DATABASE_URL: {}",
            redact(&error.to_string(), &secrets)
        )
    })
}

/// Checks that `url` is a PostgreSQL URL, and returns what of it must never be shown: the
/// password (as written and decoded, in the user info or as a `password` parameter) and the
/// whole URL. The errors quote nothing of `url`.
fn checked_secrets(url: &str) -> Result<Vec<String>, String> {
    let parsed = url::Url::parse(url).map_err(|error| {
        format!(
            "DATABASE_URL is not a URL ({error}); expected \
             postgres://user:password@host:5432/database"
        )
    })?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err("DATABASE_URL must start with postgres:// or postgresql://".into());
    }
    let mut secrets = vec![url.to_owned()];
    let mut add = |raw: &str| {
        secrets.push(raw.to_owned());
        secrets.push(
            percent_encoding::percent_decode_str(raw)
                .decode_utf8_lossy()
                .into_owned(),
        );
    };
    if let Some(password) = parsed.password() {
        add(password);
    }
    for (name, value) in parsed.query_pairs() {
        if name == "password" {
            add(&value);
        }
    }
    if let Some(query) = parsed.query() {
        for pair in query.split('&') {
            if let Some(raw) = pair.strip_prefix("password=") {
                add(raw);
            }
        }
    }
    secrets.retain(|secret| !secret.is_empty());
    // The longest first, so that no part of a longer secret survives a shorter one's removal.
    secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    secrets.dedup();
    Ok(secrets)
}

fn redact(text: &str, secrets: &[String]) -> String {
    secrets.iter().fold(text.to_owned(), |text, secret| {
        text.replace(secret, REDACTED)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_urls_are_refused_without_quoting_them() {
        for url in [
            "postgres://u:s3cr3t@[bad",
            "postgres://u:s3cr3t@host:notaport/db",
            "u:s3cr3t@host/db",
            "",
        ] {
            let error = checked_secrets(url).unwrap_err();
            assert!(error.contains("DATABASE_URL"), "{url}: {error}");
            assert!(!error.contains("s3cr3t"), "{url}: {error}");
        }
        for url in ["mysql://u:s3cr3t@host/db", "s3cr3t://u:s3cr3t@host/db"] {
            let error = checked_secrets(url).unwrap_err();
            assert!(error.contains("postgres://"), "{url}: {error}");
            assert!(!error.contains("s3cr3t"), "{url}: {error}");
        }
    }

    #[test]
    fn passwords_are_cut_out_of_error_text_in_every_spelling() {
        let url = "postgres://u:p%40ss%2Fw0rd@db.example:5432/litellm?password=qu%3Dery&sslmode=verify-full";
        let secrets = checked_secrets(url).unwrap();
        let text = format!(
            "failed: {url}; raw p%40ss%2Fw0rd; decoded p@ss/w0rd; query qu%3Dery or qu=ery; user u"
        );
        let shown = redact(&text, &secrets);
        for secret in ["p%40ss%2Fw0rd", "p@ss/w0rd", "qu%3Dery", "qu=ery", url] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("user u"), "{shown}");
    }

    #[test]
    fn a_url_without_a_password_hides_only_itself() {
        let url = "postgresql://postgres@127.0.0.1:5432/litellm";
        let secrets = checked_secrets(url).unwrap();
        assert_eq!(secrets, [url]);
        assert_eq!(
            redact("connection refused (os error 111)", &secrets),
            "connection refused (os error 111)"
        );
    }

    #[tokio::test]
    async fn connection_errors_never_carry_the_password() {
        for url in [
            // Unknown host: the driver's own error.
            "postgres://u:s3cr3t@unreachable.invalid:5432/db",
            // Nothing listens there.
            "postgres://u:s3cr3t@127.0.0.1:9/db?password=s3cr3t",
            // sea-orm quotes URLs it cannot parse.
            "postgres://u:s3cr3t@[bad",
        ] {
            let mut options = ConnectOptions::new(url);
            options.connect_timeout(std::time::Duration::from_secs(2));
            let Err(error) = connect(options).await else {
                panic!("{url} connected");
            };
            assert!(error.contains("DATABASE_URL"), "{url}: {error}");
            assert!(!error.contains("s3cr3t"), "{url}: {error}");
        }
    }
}
