//! The Graph endpoint as an origin and a path: which token scope it needs, and which links may
//! carry that token.
//!
//! Both come from `MICROSOFT_GRAPH_ENDPOINT`, so that a national cloud's Graph
//! (`https://graph.microsoft.us`, `https://microsoftgraph.chinacloudapi.cn`) is asked for a token
//! meant for itself, and so that a paging link is followed only when it points at that same Graph.

use reqwest::Url;

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub(super) struct GraphEndpoint {
    url: Url,
}

impl GraphEndpoint {
    /// `endpoint` is Graph's base, e.g. `https://graph.microsoft.com/v1.0`.
    pub fn parse(endpoint: &str) -> Result<Self> {
        let url = Url::parse(endpoint).map_err(|e| {
            Error::Settings(format!(
                "MICROSOFT_GRAPH_ENDPOINT {endpoint:?} is not a URL: {e}"
            ))
        })?;
        if !url.origin().is_tuple() {
            return Err(Error::Settings(format!(
                "MICROSOFT_GRAPH_ENDPOINT {endpoint:?} has no scheme, host and port to ask a \
                 token for"
            )));
        }
        Ok(Self { url })
    }

    /// The client-credentials scope: the endpoint's origin (scheme, host, and port unless it is
    /// the scheme's default) followed by `/.default`, as Entra names Graph's resource in each
    /// cloud.
    pub fn scope(&self) -> String {
        format!("{}/.default", self.url.origin().ascii_serialization())
    }

    /// Whether `link` points at this Graph: the same origin, a path under the endpoint's path,
    /// and no user name or password. A string prefix is not enough:
    /// `https://graph.microsoft.com.evil.example/` and `https://graph.microsoft.com@evil.example/`
    /// both start with `https://graph.microsoft.com`.
    pub fn contains(&self, link: &str) -> bool {
        let Ok(link) = Url::parse(link) else {
            return false;
        };
        let base = self.url.path().trim_end_matches('/');
        let under_base = link
            .path()
            .strip_prefix(base)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        link.origin() == self.url.origin()
            && under_base
            && link.username().is_empty()
            && link.password().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(text: &str) -> GraphEndpoint {
        GraphEndpoint::parse(text).unwrap()
    }

    #[test]
    fn the_scope_is_the_endpoints_origin() {
        for (graph, scope) in [
            (
                "https://graph.microsoft.com/v1.0",
                "https://graph.microsoft.com/.default",
            ),
            (
                "https://graph.microsoft.us/v1.0",
                "https://graph.microsoft.us/.default",
            ),
            (
                "https://dod-graph.microsoft.us/v1.0/",
                "https://dod-graph.microsoft.us/.default",
            ),
            (
                "https://microsoftgraph.chinacloudapi.cn/v1.0",
                "https://microsoftgraph.chinacloudapi.cn/.default",
            ),
            // The scheme's own port is left out, another port is kept.
            (
                "https://GRAPH.microsoft.com:443/v1.0",
                "https://graph.microsoft.com/.default",
            ),
            (
                "http://127.0.0.1:8081/v1.0",
                "http://127.0.0.1:8081/.default",
            ),
        ] {
            assert_eq!(endpoint(graph).scope(), scope, "{graph}");
        }
    }

    #[test]
    fn endpoints_without_an_origin_are_refused() {
        for bad in ["not a url", "mailto:graph@example.com", "data:text/plain,x"] {
            let e = GraphEndpoint::parse(bad).unwrap_err().to_string();
            assert!(e.contains("MICROSOFT_GRAPH_ENDPOINT"), "{e}");
        }
    }

    #[test]
    fn links_on_the_endpoint_are_followed() {
        let graph = endpoint("https://graph.microsoft.com/v1.0");
        for good in [
            "https://graph.microsoft.com/v1.0/groups/delta()?$skiptoken=abc",
            "https://graph.microsoft.com/v1.0/groups?$skiptoken=x&$top=999",
            "https://graph.microsoft.com:443/v1.0/users",
            "https://GRAPH.MICROSOFT.COM/v1.0/users",
            "https://graph.microsoft.com/v1.0",
        ] {
            assert!(graph.contains(good), "{good} should be followed");
        }
    }

    #[test]
    fn links_elsewhere_are_refused() {
        let graph = endpoint("https://graph.microsoft.com/v1.0");
        for bad in [
            // Another host that merely starts with Graph's name.
            "https://graph.microsoft.com.evil.example/v1.0/groups",
            // Graph's name as a user name, evil.example as the host.
            "https://graph.microsoft.com@evil.example/v1.0/groups",
            "https://graph.microsoft.com:pw@evil.example/v1.0/groups",
            // Graph's host with credentials in the link.
            "https://user:pw@graph.microsoft.com/v1.0/groups",
            // Another scheme or port.
            "http://graph.microsoft.com/v1.0/groups",
            "https://graph.microsoft.com:8443/v1.0/groups",
            // Another API version, directly or by walking up.
            "https://graph.microsoft.com/beta/groups",
            "https://graph.microsoft.com/v1.0/../beta/groups",
            "https://graph.microsoft.com/v1.0/%2e%2e/beta/groups",
            "https://graph.microsoft.com/v1.0evil/groups",
            // Not a URL at all, or a relative one.
            "/v1.0/groups",
            "",
            "javascript:alert(1)",
        ] {
            assert!(!graph.contains(bad), "{bad} should be refused");
        }
    }

    #[test]
    fn a_root_endpoint_covers_every_path_of_its_origin() {
        let graph = endpoint("http://127.0.0.1:8081/");
        assert!(graph.contains("http://127.0.0.1:8081/v1.0/groups"));
        assert!(!graph.contains("http://127.0.0.1:8082/v1.0/groups"));
        assert!(!graph.contains("http://localhost:8081/v1.0/groups"));
    }
}
