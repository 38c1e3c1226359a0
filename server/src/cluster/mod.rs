pub(crate) mod forward;
pub(crate) mod tunnel;
