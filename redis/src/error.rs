//! Why a store could not be made.

/// Why [`RedisStore::connect`](crate::RedisStore::connect) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not one this crate understands (see the [crate docs](crate)).
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(String),
    /// An option is out of range (the message says which).
    #[error("invalid Redis store option: {0}")]
    InvalidOption(String),
    /// Redis could not be reached or refused the first commands within the
    /// connect timeout.
    #[error("cannot reach Redis at {url}: {reason}")]
    Unreachable {
        /// Where (the URL without its password).
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The operating system gave no randomness for the node id.
    #[error("no randomness for the node id: {0}")]
    Random(String),
}
