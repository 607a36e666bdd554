//! Clients for the emulator. The local cloud only ever talks to an emulator on loopback:
//! `AWS_ENDPOINT_URL` must be set and name 127.0.0.0/8 or localhost.

use anyhow::{bail, Context};

/// The emulator's endpoint from `AWS_ENDPOINT_URL`, checked to be on loopback.
pub fn endpoint() -> anyhow::Result<String> {
    let url = std::env::var("AWS_ENDPOINT_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .context("AWS_ENDPOINT_URL is not set: the local cloud works only against the emulator (eval \"$(tyrell-local up)\" sets it)")?;
    check_loopback(&url)?;
    Ok(url)
}

/// Fails unless `url` is `http(s)://` on 127.0.0.0/8 or localhost.
pub fn check_loopback(url: &str) -> anyhow::Result<()> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    let Some(rest) = rest else { bail!("AWS_ENDPOINT_URL {url:?} is not an http(s) URL") };
    let hostport = rest.split('/').next().unwrap_or_default();
    let host = match hostport.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => hostport,
    };
    let ok = host == "localhost" || host.parse::<std::net::Ipv4Addr>().map(|a| a.octets()[0] == 127).unwrap_or(false);
    if !ok {
        bail!("AWS_ENDPOINT_URL {url} is not on loopback: the local cloud talks only to an emulator on 127.0.0.0/8");
    }
    Ok(())
}

/// The region from `AWS_REGION` / `AWS_DEFAULT_REGION`, else us-east-1.
pub fn region() -> String {
    std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .ok()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "us-east-1".into())
}

/// The SDK configuration for the emulator (endpoint checked to be on loopback).
pub async fn config() -> anyhow::Result<aws_config::SdkConfig> {
    let url = endpoint()?;
    Ok(aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(url)
        .region(aws_config::Region::new(region()))
        .load()
        .await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only() {
        assert!(check_loopback("http://127.0.0.1:5000").is_ok());
        assert!(check_loopback("http://localhost:5000/").is_ok());
        assert!(check_loopback("https://127.3.4.5").is_ok());
        assert!(check_loopback("https://ec2.us-east-1.amazonaws.com").is_err());
        assert!(check_loopback("http://10.0.0.1:5000").is_err());
        assert!(check_loopback("127.0.0.1:5000").is_err());
    }
}
