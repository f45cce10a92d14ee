//! The integration tests, one binary (as ripgrep does): each file beside this one is a
//! module, so candle, tokenizers and parquet are linked once, not once per file.
//!
//! Run one area with its module path, e.g. `cargo test --test tests glue_tsv::`; the
//! slow real-weight tests are `#[ignore]`d and run with
//! `cargo test --test tests real_ -- --ignored --nocapture`.
//! `tests/cuda_parity.rs` is a binary of its own, built only with `--features cuda`.

mod common;

mod allocator;
mod augment_cli;
mod augment_marian;
mod augment_mlm;
mod augment_spm;
mod bench;
mod bert_parity;
mod cli_eval;
mod cli_inspect;
mod corpus;
mod data_parallel;
mod distill_resume;
mod distill_synthetic;
mod export;
mod families;
mod glue_parquet;
mod glue_tsv;
mod hub;
mod mixed_precision;
mod model_gradients;
mod multi_node;
mod pipeline_cli;
mod real_distill;
mod real_finetune;
mod recipes;
mod weight_formats;
