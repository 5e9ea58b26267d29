//! Roaster's embedded time-series engine (work in progress: see the module docs).
//!
//! **Invariant:** tsdb knows nothing about HTTP, wire protocols or rules. It is a sync
//! library with its own threads (no tokio).

pub mod block;
pub mod codec;
pub mod compact;
pub mod rollup;
