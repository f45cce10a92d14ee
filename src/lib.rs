//! candle-distill: TinyBERT-style distillation of BERT teachers on candle.

pub mod augment;
pub mod bench;
pub mod data;
pub mod device;
pub mod distill;
pub mod error;
pub mod eval;
pub mod export;
pub mod hub;
pub mod inspect;
pub mod io;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod plan;
pub mod plot;
pub mod progress;
pub mod recipe;
pub mod rng;
pub mod run;
pub mod runtime;
/// Test support; built for the crate's own tests and with the `testing` feature.
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
