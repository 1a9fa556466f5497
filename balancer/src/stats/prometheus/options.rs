//! How the Prometheus rendering names and labels its metrics: a prefix and
//! constant labels, checked against Prometheus' naming rules.

use super::label;

/// How [`Snapshot::to_prometheus_with`](crate::stats::Snapshot::to_prometheus_with)
/// names and labels its metrics: a prefix for every family name and
/// constant labels on every sample, so that several listener sets in one
/// process (or several processes behind one scrape) can be told apart.
///
/// ```
/// use balancer::stats::PrometheusOptions;
///
/// let options = PrometheusOptions::new()
///     .prefix("edge")?
///     .label("listener_set", "public")?;
/// // snapshot.to_prometheus_with(&options) renders e.g.
/// // edge_worker_downstream_cx_active{listener_set="public",worker="0"} 3
/// # Ok::<(), balancer::stats::PrometheusOptionsError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrometheusOptions {
    pub(crate) prefix: String,
    pub(crate) labels: Vec<(String, String)>,
}

impl Default for PrometheusOptions {
    /// Prefix `balancer`, no constant labels: what
    /// [`Snapshot::to_prometheus`](crate::stats::Snapshot::to_prometheus) renders.
    fn default() -> Self {
        Self {
            prefix: "balancer".to_owned(),
            labels: Vec::new(),
        }
    }
}

impl PrometheusOptions {
    /// The defaults: prefix `balancer`, no constant labels.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first word of every metric name, `balancer` by default: with
    /// `prefix("edge")` the families are `edge_worker_downstream_cx_active`,
    /// `edge_backend_info`, and so on.
    ///
    /// # Errors
    /// [`PrometheusOptionsError::InvalidPrefix`] unless `prefix` is a
    /// Prometheus metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
    pub fn prefix(mut self, prefix: &str) -> Result<Self, PrometheusOptionsError> {
        if !is_name(prefix, true) {
            return Err(PrometheusOptionsError::InvalidPrefix(prefix.to_owned()));
        }
        self.prefix = prefix.to_owned();
        Ok(self)
    }

    /// Adds a constant label `name="value"` to every sample, before the
    /// sample's own labels.
    ///
    /// # Errors
    /// [`PrometheusOptionsError::InvalidLabelName`] unless `name` is a
    /// Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`, not starting with
    /// `__`); [`PrometheusOptionsError::ReservedLabel`] for a label the
    /// rendering uses itself (`worker`, `listener`, ...);
    /// [`PrometheusOptionsError::DuplicateLabel`] for a name given twice.
    pub fn label(mut self, name: &str, value: &str) -> Result<Self, PrometheusOptionsError> {
        let error = if !is_name(name, false) || name.starts_with("__") {
            PrometheusOptionsError::InvalidLabelName
        } else if label::ALL.contains(&name) {
            PrometheusOptionsError::ReservedLabel
        } else if self.labels.iter().any(|(n, _)| n == name) {
            PrometheusOptionsError::DuplicateLabel
        } else {
            self.labels.push((name.to_owned(), value.to_owned()));
            return Ok(self);
        };
        Err(error(name.to_owned()))
    }
}

/// Why a [`PrometheusOptions`] setting was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PrometheusOptionsError {
    /// The prefix is not a metric name.
    #[error("metric prefix {0:?} is not a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)")]
    InvalidPrefix(String),
    /// The label name is not a Prometheus label name.
    #[error(
        "label name {0:?} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, no leading __)"
    )]
    InvalidLabelName(String),
    /// The label name is one the rendering uses on its own samples.
    #[error("label name {0:?} is used by the rendering itself; choose another")]
    ReservedLabel(String),
    /// The label name was given twice.
    #[error("constant label {0:?} is given twice")]
    DuplicateLabel(String),
}

/// Whether `name` is a Prometheus metric name (`colons`) or label name.
fn is_name(name: &str, colons: bool) -> bool {
    let allowed = |c: char| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':');
    let mut chars = name.chars();
    chars.next().is_some_and(allowed) && chars.all(|c| allowed(c) || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::{PrometheusOptions, PrometheusOptionsError};

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        let options = PrometheusOptions::new();
        let err = |result: Result<PrometheusOptions, _>| result.unwrap_err();
        assert_eq!(
            err(options.clone().prefix("9lives")),
            PrometheusOptionsError::InvalidPrefix("9lives".into())
        );
        assert_eq!(
            err(options.clone().prefix("")),
            PrometheusOptionsError::InvalidPrefix(String::new())
        );
        assert_eq!(
            err(options.clone().label("a-b", "x")),
            PrometheusOptionsError::InvalidLabelName("a-b".into())
        );
        assert_eq!(
            err(options.clone().label("__name__", "x")),
            PrometheusOptionsError::InvalidLabelName("__name__".into())
        );
        assert_eq!(
            err(options.clone().label("worker", "x")),
            PrometheusOptionsError::ReservedLabel("worker".into())
        );
        let once = options.label("set", "a").unwrap();
        assert_eq!(
            err(once.label("set", "b")),
            PrometheusOptionsError::DuplicateLabel("set".into())
        );
        assert!(PrometheusOptions::new().prefix("a:b_c9").is_ok());
    }
}
