//! The webhook's base URL, as registered in Portal's dashboard.

use crate::cli::CliError;
use hyper::Uri;

/// Where the webhook is: `{base}/backup` and `{base}/backup/fetch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    pub tls: bool,
    /// `host:port`, to connect to.
    pub addr: String,
    /// The host, without the brackets of an IPv6 address: the name the certificate must carry.
    pub host: String,
    /// The `Host` header: the URL's authority as written.
    pub authority: String,
    /// The path prefix, without a trailing `/` (empty for the root).
    pub prefix: String,
}

impl WebhookUrl {
    /// Parses the base URL registered in Portal's dashboard.
    pub fn parse(value: &str) -> Result<Self, CliError> {
        let invalid = |why: &str| {
            CliError::Local(format!(
                "--webhook-url `{value}`: {why}; expected http(s)://HOST[:PORT][/PREFIX]"
            ))
        };
        let uri: Uri = value.parse().map_err(|_| invalid("not a URL"))?;
        let tls = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("https") => true,
            Some("http") => false,
            Some(_) => return Err(invalid("the scheme must be http or https")),
            None => return Err(invalid("no http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("credentials in the URL are not supported"));
        }
        if uri.query().is_some() {
            return Err(invalid("Portal appends /backup to the base URL: no query"));
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let addr = if bare.contains(':') {
            format!("[{bare}]:{port}")
        } else {
            format!("{bare}:{port}")
        };
        Ok(Self {
            tls,
            addr,
            host: bare,
            authority: authority.as_str().to_owned(),
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// The path of `route` (`/backup` or `/backup/fetch`) under the prefix.
    pub fn path(&self, route: &str) -> String {
        format!("{}{route}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_gives_the_address_the_name_and_the_prefix() {
        let url = WebhookUrl::parse("https://vault.example.com/portal/webhook/").unwrap();
        assert!(url.tls);
        assert_eq!(url.addr, "vault.example.com:443");
        assert_eq!(url.host, "vault.example.com");
        assert_eq!(url.path("/backup/fetch"), "/portal/webhook/backup/fetch");
        let url = WebhookUrl::parse("http://127.0.0.1:7451").unwrap();
        assert!(!url.tls);
        assert_eq!(url.addr, "127.0.0.1:7451");
        assert_eq!(url.authority, "127.0.0.1:7451");
        assert_eq!(url.path("/backup"), "/backup");
        let url = WebhookUrl::parse("https://[::1]:8443/hook").unwrap();
        assert_eq!(
            (url.addr.as_str(), url.host.as_str()),
            ("[::1]:8443", "::1")
        );
        for bad in [
            "vault.example.com",
            "ftp://vault.example.com",
            "https://vault.example.com/hook?token=1",
            "https://user:pw@vault.example.com",
            "/backup",
        ] {
            let err = WebhookUrl::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with(&format!("--webhook-url `{bad}`")), "{err}");
        }
    }
}
