//! Why a provider configuration cannot work.

/// A configuration that cannot work; reported at start-up, never per request.
/// Messages name settings, never their secret values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting is out of range or does not parse.
    #[error("invalid {setting}: {message}")]
    Invalid {
        /// The environment variable at fault.
        setting: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The provider needs a key and none was given.
    #[error("{provider} provider needs {setting}")]
    MissingKey {
        /// The provider.
        provider: &'static str,
        /// The variable to set.
        setting: &'static str,
    },
    /// URL and key counts cannot be paired (see the module docs).
    #[error("cannot pair {urls} base URLs with {keys} keys: give one URL, one key, or as many keys as URLs")]
    EndpointMismatch {
        /// Number of base URLs.
        urls: usize,
        /// Number of keys.
        keys: usize,
    },
    /// The shared HTTP client could not be built (TLS set-up).
    #[error("cannot build HTTP client: {0}")]
    HttpClient(String),
}
