//! candle-distill: TinyBERT-style distillation of BERT teachers on candle.

pub mod bench;
pub mod device;
pub mod error;
pub mod export;
pub mod hub;
pub mod inspect;
pub mod io;
pub mod model;
pub mod rng;
pub mod testing;
pub mod tokenizer;

pub use error::{Error, Result};
