//! Placeholder replaced by the tunnel helper's work at merge.
