//! Encoders (the seed Keras ResNet-34, CIFAR ResNets) and projectors on libtorch.
//!
//! Filled in by the model issue.
#![deny(missing_docs)]
