//! The two strategies; each is the only place that knows its order of steps.

pub mod cinder;
pub mod swift;
