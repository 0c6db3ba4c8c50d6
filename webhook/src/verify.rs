//! Which notifications are Graph's for our subscriptions: the right `clientState` (the current
//! secret or one still accepted during a rotation) and our tenant.

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{SHA256, digest};
use secrecy::{ExposeSecret, SecretString};

/// Why a notification was dropped; the label of the drop counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    ClientState,
    Tenant,
}

impl DropReason {
    pub fn label(self) -> &'static str {
        match self {
            Self::ClientState => "client_state",
            Self::Tenant => "tenant",
        }
    }
}

/// How many notifications of one request were dropped, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub client_state: u64,
    pub tenant: u64,
}

impl Dropped {
    pub fn add(&mut self, reason: DropReason) {
        let count = match reason {
            DropReason::ClientState => &mut self.client_state,
            DropReason::Tenant => &mut self.tenant,
        };
        *count = count.saturating_add(1);
    }

    pub fn any(&self) -> bool {
        self.client_state > 0 || self.tenant > 0
    }

    /// Each reason with its count.
    pub fn by_reason(&self) -> [(DropReason, u64); 2] {
        [
            (DropReason::ClientState, self.client_state),
            (DropReason::Tenant, self.tenant),
        ]
    }
}

pub struct Verifier {
    /// SHA-256 of each accepted secret: comparing digests keeps the comparison constant-time
    /// and independent of the secrets' lengths.
    secrets: Vec<[u8; 32]>,
    tenant_id: String,
}

fn hash(value: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, value.as_bytes()).as_ref());
    out
}

impl Verifier {
    pub fn new(current: &SecretString, previous: &[SecretString], tenant_id: &str) -> Self {
        let secrets = std::iter::once(current)
            .chain(previous)
            .map(|s| hash(s.expose_secret()))
            .collect();
        Self {
            secrets,
            tenant_id: tenant_id.trim().to_ascii_lowercase(),
        }
    }

    pub fn check(&self, client_state: Option<&str>, tenant_id: &str) -> Result<(), DropReason> {
        let offered = hash(client_state.unwrap_or_default());
        // Compare against every secret, without stopping at the first match.
        let matched = self.secrets.iter().fold(false, |found, secret| {
            verify_slices_are_equal(secret, &offered).is_ok() | found
        });
        if client_state.is_none() || !matched {
            return Err(DropReason::ClientState);
        }
        if !tenant_id.trim().eq_ignore_ascii_case(&self.tenant_id) {
            return Err(DropReason::Tenant);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_and_previous_secrets_and_the_tenant() {
        let v = Verifier::new(
            &SecretString::from("now"),
            &[SecretString::from("before")],
            "AAAA-bbbb",
        );
        assert_eq!(v.check(Some("now"), "aaaa-BBBB"), Ok(()));
        assert_eq!(v.check(Some("before"), "aaaa-bbbb"), Ok(()));
        assert_eq!(
            v.check(Some("nope"), "aaaa-bbbb"),
            Err(DropReason::ClientState)
        );
        assert_eq!(v.check(None, "aaaa-bbbb"), Err(DropReason::ClientState));
        assert_eq!(v.check(Some("now"), "other"), Err(DropReason::Tenant));
    }
}
