//! `[tracking]`: the experiment trackers a sweep's runs are logged to besides their own folders
//! (TensorBoard event files are always written; `crate::tracking` does the logging).

use serde::{Deserialize, Serialize};

/// `[tracking]`: where runs are logged. None of it changes what is trained: it is left out of
/// config ids and run hashes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackingSpec {
    /// An MLflow tracking server (`http://host:port`): each run is an MLflow run of the
    /// experiment named like the sweep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlflow: Option<String>,
    /// The MLflow experiment (default: the sweep's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlflow_experiment: Option<String>,
}

/// What is wrong with an MLflow tracking URI, if anything: `sweep` speaks MLflow's REST API
/// to a server, so only http(s) URIs are taken (not a local `mlruns` folder or `databricks`).
pub fn check_mlflow_uri(uri: &str) -> Result<(), String> {
    let rest = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(()),
        _ => Err(format!(
            "{uri:?} is not an MLflow tracking server's address: write http://HOST:PORT (a server started with `mlflow server`); local mlruns folders are not written"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_server_addresses_are_taken() {
        assert!(check_mlflow_uri("http://127.0.0.1:5000").is_ok());
        assert!(check_mlflow_uri("https://mlflow.example.org/").is_ok());
        for bad in [
            "mlruns",
            "file:///tmp/mlruns",
            "http://",
            "databricks",
            "127.0.0.1:5000",
        ] {
            let e = check_mlflow_uri(bad).unwrap_err();
            assert!(e.contains("http://HOST:PORT"), "{bad}: {e}");
        }
    }
}
