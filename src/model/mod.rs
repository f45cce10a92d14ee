//! The BERT model, its config, and loading checkpoints from folders or the hub.

#[cfg(system_blas)]
pub mod attention;
pub mod bert;
#[cfg(system_blas)]
pub mod blas;
pub mod config;
pub mod family;
pub mod kernels;
pub mod load;
pub mod ops;
pub mod params;
pub mod torch_legacy;
pub mod weights;

pub use bert::{
    BertForMaskedLM, BertForSequenceClassification, BertInput, BertModel, BertOutput,
    ClassifierOutput, Outputs, Train,
};
pub use config::BertConfig;
pub use family::Family;
pub use load::{
    build_classifier, build_masked_lm, load_classifier, BuildOptions, Built, LoadedClassifier,
    ModelFiles,
};
pub use params::{Fresh, LoadReport, ParamSource};
pub use weights::WeightFiles;
