//! Analytics over calls and experiments: what the rollups and the results are built from.
//!
//! - [`assign`]: which variant of an experiment a call gets (sticky per customer, by weight).
//! - [`sketch`]: a mergeable quantile sketch (DDSketch): percentiles of durations and
//!   latencies stored with each rollup and merged across hours, agents and dimensions.
//! - [`stats`]: rates with their 95% intervals and the comparison of two rates (experiment
//!   results): Wilson intervals, Newcombe's interval of a difference, the two-proportion z-test
//!   or Fisher's exact test.

pub mod assign;
pub mod sketch;
pub mod stats;
