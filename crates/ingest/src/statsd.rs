//! StatsD over UDP and TCP: packets are parsed with `wire::statsd`, aggregated per flush
//! interval by [`aggregator::Aggregator`] (Etsy StatsD semantics), and the flushed samples
//! travel the same resolve → limits → queue path as every other source.

pub mod aggregator;
