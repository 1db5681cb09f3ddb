//! CIFAR-10 reader, TensorFlow-faithful augmentations and a rayon twin-view pipeline.
//!
//! Does not depend on libtorch. Filled in by the data issue.
#![deny(missing_docs)]
