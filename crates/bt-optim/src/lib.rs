//! LAMB and LARS optimizers with learning-rate schedules.
//!
//! Filled in by the optimizer issue.
#![deny(missing_docs)]
