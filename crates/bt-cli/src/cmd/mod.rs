//! One module per subcommand family.
pub mod bench;
pub mod config;
pub mod data;
pub mod info;
pub mod loss;
pub mod model;
pub mod optim;
