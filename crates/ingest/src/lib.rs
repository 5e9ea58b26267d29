//! placeholder

pub mod statsd;
