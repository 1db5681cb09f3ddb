//! One module per subcommand family.
pub mod bench;
pub mod config;
pub mod data;
pub mod demo;
pub mod embed;
pub mod eval;
pub mod info;
pub mod launch;
pub mod loss;
pub mod model;
pub mod optim;
pub mod pretrain;
pub mod selftest;
pub mod step;
pub mod weights;
