//! Analytics over calls: what the rollups are built from.
//!
//! - [`sketch`]: a mergeable quantile sketch (DDSketch): percentiles of durations and
//!   latencies stored with each rollup and merged across hours, agents and dimensions.

pub mod sketch;
