//! candle-distill: TinyBERT-style distillation of BERT teachers on candle.

pub mod device;
pub mod distill;
pub mod error;
pub mod hub;
pub mod inspect;
pub mod io;
pub mod model;
pub mod plot;
pub mod rng;
pub mod testing;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
