//! The `[metrics]` and `[service]` configuration sections: how the daemon presents itself to
//! its operators (metrics listener) and to systemd (shutdown deadline). Kept beside the code that
//! uses them; `config.rs` only wires them into `Settings` and `Config`.

use crate::config::ConfigError;
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// Longest shutdown deadline accepted. The unit's `TimeoutStopSec=` (90s) must stay above the
/// deadline, or systemd SIGKILLs the daemon before it has released its leases.
pub const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Default, Deserialize)]
pub struct MetricsSettings {
    /// `host:port` of the Prometheus, `/healthz` and `/readyz` listener; none when absent.
    pub listen: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ServiceSettings {
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            shutdown_timeout: default_shutdown_timeout(),
        }
    }
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// After SIGTERM, the daemon exits within this even if a request or a write hangs.
    pub shutdown_timeout: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            shutdown_timeout: default_shutdown_timeout(),
        }
    }
}

impl MetricsSettings {
    pub fn validate(self) -> Result<MetricsConfig, ConfigError> {
        let listen = match self.listen.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|e| ConfigError::Key {
                key: "metrics.listen".into(),
                problem: format!(
                    "\"{text}\" is not an address:port ({e}); e.g. \"127.0.0.1:9464\""
                ),
            })?),
        };
        Ok(MetricsConfig { listen })
    }
}

impl ServiceSettings {
    pub fn validate(self) -> Result<ServiceConfig, ConfigError> {
        let t = self.shutdown_timeout;
        if t < Duration::from_secs(1) || t > MAX_SHUTDOWN_TIMEOUT {
            return Err(ConfigError::Key {
                key: "service.shutdown_timeout".into(),
                problem: "must be between 1s and 10m, and below the unit's TimeoutStopSec".into(),
            });
        }
        Ok(ServiceConfig {
            shutdown_timeout: t,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_is_optional_and_parsed() {
        let none = MetricsSettings { listen: None }.validate().expect("none");
        assert_eq!(none.listen, None);
        let some = MetricsSettings {
            listen: Some("127.0.0.1:9464".into()),
        }
        .validate()
        .expect("valid");
        assert_eq!(some.listen, Some(SocketAddr::from(([127, 0, 0, 1], 9464))));
    }

    #[test]
    fn bad_listen_names_the_key() {
        let e = MetricsSettings {
            listen: Some("localhost".into()),
        }
        .validate()
        .expect_err("no port");
        assert!(e.to_string().contains("metrics.listen"), "{e}");
    }

    #[test]
    fn shutdown_timeout_is_bounded() {
        for bad in [Duration::ZERO, Duration::from_secs(3600)] {
            let e = ServiceSettings {
                shutdown_timeout: bad,
            }
            .validate()
            .expect_err("out of range");
            assert!(e.to_string().contains("service.shutdown_timeout"), "{e}");
        }
        assert!(ServiceSettings::default().validate().is_ok());
    }
}
