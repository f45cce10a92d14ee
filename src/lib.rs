//! candle-distill: TinyBERT-style distillation of BERT teachers on candle.
//!
//! The modules form layers: each uses only modules of its own layer and of the layers
//! before it.
//! 1. Foundations: `error`, `io` (atomic writes, folder locks), `rng`, `runtime`
//!    (allocator, threads), `progress`, `device` (devices and float types), `hub`
//!    (the Hugging Face hub and its cache).
//! 2. Models and text: `model` (BERT, weights; fused CPU kernels, attention and BLAS
//!    products), `tokenizer`.
//! 3. Data and scores: `data` (GLUE and user files, encoded datasets, batches),
//!    `metrics`.
//! 4. Jobs on one model: `eval`, `export`, `inspect`, `bench`; `plot` and `run` (a run
//!    folder: metrics, checkpoints, plots).
//! 5. Training: `train` (optimizer, schedules, precision, collectives), `augment`, then
//!    `distill` (losses, students, the staged trainer).
//! 6. Jobs from recipes: `recipe` (the typed configuration), then `pipeline` (a whole
//!    run) and `plan`.
//!
//! The binary (`src/cli`) uses the library only; `testing` is test support.

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
