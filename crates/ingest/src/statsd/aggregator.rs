//! StatsD aggregation (placeholder; helper B owns this file).
