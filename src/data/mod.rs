//! GLUE and user data: tasks, loading (GLUE TSVs, hub parquet, CSV/TSV/JSONL, plain
//! text), label reconciliation with models, tokenised batches.

pub mod batch;
pub mod corpus;
pub mod dataset;
pub mod glue_tsv;
pub mod labels;
pub mod parquet;
pub mod task;
pub mod user;

pub use batch::{batch_order, inference_order, Batch, EncodedDataset};
pub use dataset::{
    load_dataset, DataSource, Dataset, Example, Label, LoadOptions, Predictions, UserFile,
    UserFormat, GLUE_HUB_REPO,
};
pub use labels::{reconcile_labels, LabelMatch};
pub use task::{MetricSet, Split, Task};
pub use user::load_unlabeled;
