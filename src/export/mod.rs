//! Exporting a student as a Hugging Face sequence-classifier folder of its family
//! (`BertForSequenceClassification`, `RobertaForSequenceClassification`, ...) that
//! transformers loads as is: `model.safetensors`, `config.json`, the tokenizer files
//! and a model card.
//!
//! The folder is built in a temporary sibling, re-loaded and checked against the
//! trained model (tensors, tokenisation, logits), and only then renamed into place.

mod card;
mod tokenizer_files;
mod verify;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

pub use card::{DatasetInfo, MetricRow, ModelCard, SpeedComparison, TeacherSize};
pub use tokenizer_files::ExportTokenizer;
pub use verify::{
    classifier_logits, default_examples, default_tolerance, read_examples, relative_error, Example,
    LogitCheck,
};

use crate::model::{build_classifier, BertConfig, BuildOptions, ModelFiles};
use crate::{Error, Result};
use tokenizer_files::ResolvedTokenizer;

/// A trained student, as export needs it.
pub struct ExportSource {
    /// Tensors by canonical name (`bert.…`, `classifier.…`). Anything else
    /// (`fit_denses.…`, `cls.…`, projections) is training-only and left out.
    pub tensors: HashMap<String, Tensor>,
    /// The student's config, with its label map.
    pub config: BertConfig,
    pub tokenizer: ExportTokenizer,
    pub card: ModelCard,
}

impl ExportSource {
    /// A checkpoint in Hugging Face layout (local folder or hub id), possibly holding
    /// training-only tensors besides the classifier.
    pub fn from_checkpoint(spec: &str) -> Result<Self> {
        let files = ModelFiles::resolve(spec)?;
        Ok(ExportSource {
            tensors: files.read_weights()?,
            config: files.read_config()?,
            tokenizer: ExportTokenizer::Files(files.tokenizer.clone()),
            card: ModelCard::default(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Storage dtype of the weights: F32, F16 or BF16.
    pub dtype: DType,
    /// Replace an existing non-empty destination.
    pub force: bool,
    /// Inputs on which the export's logits are checked; built-in sentences when empty.
    pub check_examples: Vec<Example>,
    /// Overrides [`default_tolerance`] for the dtype.
    pub tolerance: Option<f64>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            dtype: DType::F32,
            force: false,
            check_examples: Vec::new(),
            tolerance: None,
        }
    }
}

impl ExportOptions {
    /// The inputs of the logit check: the options' own, else the built-in sentences.
    fn examples(&self) -> Vec<Example> {
        if self.check_examples.is_empty() {
            default_examples()
        } else {
            self.check_examples.clone()
        }
    }
}

/// What was written, and the check it passed.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub out: PathBuf,
    /// `float32`, `float16` or `bfloat16`.
    pub dtype: String,
    pub tensors: usize,
    pub parameters: usize,
    pub size_on_disk_bytes: u64,
    /// Source tensors left out because `BertForSequenceClassification` has no use for them.
    pub dropped: Vec<String>,
    pub files: Vec<String>,
    pub check: LogitCheck,
}

/// transformers' name for a dtype (`torch_dtype` in config.json).
pub fn torch_dtype_name(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("float32"),
        DType::F16 => Ok("float16"),
        DType::BF16 => Ok("bfloat16"),
        other => Err(Error::invalid(
            "--dtype",
            format!("{other:?}"),
            "export writes f32, f16 or bf16 weights",
        )),
    }
}

/// Writes `source` as a transformers sequence-classifier folder of its family at `out`.
pub fn export_classifier(
    source: &ExportSource,
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportReport> {
    let dtype_name = torch_dtype_name(opts.dtype)?;
    check_destination(out, opts.force)?;
    let config = export_config(&source.config, dtype_name)?;

    // The trained model, in f32 on the CPU: what the export must reproduce. Building
    // it also sorts the source tensors into used and training-only ones.
    let reference = build_classifier(
        "the trained model",
        &config,
        source.tensors.clone(),
        &BuildOptions::inference(&Device::Cpu),
    )?;
    let dropped: BTreeSet<String> = reference.report.unused.iter().cloned().collect();
    let written = exported_tensors(source, &dropped, opts.dtype)?;
    let parameters = written.values().map(|t| t.elem_count()).sum();
    let tokenizer = ResolvedTokenizer::new(&source.tokenizer)?;
    check_vocabulary(&tokenizer, &config)?;

    let staging = Staging::create(out)?;
    let dir = staging.path();
    let size_on_disk_bytes = write_model(dir, &config, &written)?;
    let tokenizer_files = tokenizer.write(dir, config.max_sequence_length(), config.family())?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "student".into());
    let facts = card::StudentFacts {
        name: &name,
        parameters,
        size_on_disk_bytes,
        layers: config.num_hidden_layers,
        hidden_size: config.hidden_size,
        labels: &config.labels("config.json")?.unwrap_or_default(),
        regression: config.is_regression(),
        dtype: dtype_name,
    };
    crate::io::write_atomic(
        &dir.join("README.md"),
        source.card.render(&facts).as_bytes(),
    )?;

    let examples = opts.examples();
    let check = verify::verify_folder(
        dir,
        &reference.model,
        &tokenizer.tokenizer,
        &written,
        &examples,
        opts.tolerance.unwrap_or(default_tolerance(opts.dtype)),
    )?;
    staging.commit(out, opts.force)?;
    tracing::info!(
        "exported {} ({parameters} parameters, {dtype_name}) to {}; logits match the trained model's to {:.1e} on {} examples",
        name,
        out.display(),
        check.rel_err,
        examples.len()
    );
    Ok(ExportReport {
        out: out.to_path_buf(),
        dtype: dtype_name.into(),
        tensors: written.len(),
        parameters,
        size_on_disk_bytes,
        dropped: dropped.into_iter().collect(),
        files: ["config.json", "model.safetensors", "README.md"]
            .into_iter()
            .chain(tokenizer_files)
            .map(String::from)
            .collect(),
        check,
    })
}

/// The tensors to write: every source tensor but the training-only ones (`dropped`),
/// on the CPU in `dtype`.
fn exported_tensors(
    source: &ExportSource,
    dropped: &BTreeSet<String>,
    dtype: DType,
) -> Result<HashMap<String, Tensor>> {
    if !dropped.is_empty() {
        let names: Vec<&str> = dropped.iter().map(String::as_str).collect();
        tracing::info!(
            "leaving out {} training-only tensors: {}",
            names.len(),
            names.join(", ")
        );
    }
    source
        .tensors
        .iter()
        .filter(|(name, _)| !dropped.contains(*name))
        .map(|(name, t)| {
            let t = t.to_device(&Device::Cpu)?.to_dtype(dtype)?.contiguous()?;
            Ok((name.clone(), t))
        })
        .collect()
}

/// Every token id the tokenizer gives must have an embedding row.
fn check_vocabulary(tokenizer: &ResolvedTokenizer, config: &BertConfig) -> Result<()> {
    let tok_vocab = tokenizer.tokenizer.vocab_size();
    if tok_vocab > config.vocab_size {
        return Err(Error::invalid(
            "tokenizer",
            "vocabulary",
            format!(
                "{tok_vocab} tokens, but the model's vocab_size is {}",
                config.vocab_size
            ),
        ));
    }
    Ok(())
}

/// Writes model.safetensors and config.json into `dir` in the family's layout; returns
/// the weights' size.
fn write_model(dir: &Path, config: &BertConfig, tensors: &HashMap<String, Tensor>) -> Result<u64> {
    let family = config.family();
    let size = write_weights(
        &dir.join("model.safetensors"),
        &family.checkpoint_tensors(tensors),
    )?;
    crate::io::write_json(&dir.join("config.json"), &config.to_family_json()?)?;
    Ok(size)
}

/// Writes `tensors` as safetensors with transformers' `format: pt` metadata; returns
/// the file's size.
fn write_weights(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<u64> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(
        tensors.iter().map(|(k, v)| (k.as_str(), v)),
        Some(metadata),
        path,
    )
    .map_err(|e| Error::Weights {
        path: path.display().to_string(),
        name: "*".into(),
        message: format!("cannot write: {e}"),
    })?;
    Ok(std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len())
}

/// The config transformers needs to load the student as its family's sequence
/// classifier (`BertForSequenceClassification`, `RobertaForSequenceClassification`, ...).
fn export_config(config: &BertConfig, dtype_name: &str) -> Result<BertConfig> {
    let mut c = config.clone();
    c.validate("the student's config")?;
    let family = c.family();
    c.architectures = Some(vec![family.classifier_architecture().into()]);
    c.model_type = Some(family.model_type().into());
    let labels = match c.labels("the student's config")? {
        Some(labels) => labels,
        // transformers' default names.
        None => (0..c.num_labels()).map(|i| format!("LABEL_{i}")).collect(),
    };
    if let Some(n) = c.num_labels.filter(|n| *n != labels.len()) {
        return Err(Error::invalid(
            "the student's config",
            "num_labels",
            format!("{n} disagrees with id2label's {} labels", labels.len()),
        ));
    }
    let problem_type = c.problem_type.clone();
    c.set_labels(&labels);
    // Keep an explicit problem type (multi-label); `set_labels` picks one otherwise.
    if problem_type.is_some() {
        c.problem_type = problem_type;
    }
    if labels.len() == 1 && c.problem_type.as_deref() != Some("regression") {
        return Err(Error::invalid(
            "the student's config",
            "problem_type",
            "one output is a regression head; problem_type must be `regression`",
        ));
    }
    c.extra.remove("_name_or_path");
    // transformers 5 reads `dtype`; earlier versions read `torch_dtype`.
    c.extra.insert("torch_dtype".into(), dtype_name.into());
    c.extra.insert("dtype".into(), dtype_name.into());
    Ok(c)
}

/// Fails early when `out` cannot take an export.
fn check_destination(out: &Path, force: bool) -> Result<()> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() && !force {
                return Err(Error::msg(format!(
                    "{} exists and is not empty; choose another folder or pass --force to overwrite",
                    out.display()
                )));
            }
            Ok(())
        }
        Err(_) if out.exists() => Err(Error::invalid(
            out.display(),
            "--out",
            "exists and is not a folder",
        )),
        Err(_) => Ok(()),
    }
}

/// A temporary sibling of the destination, removed on drop unless committed.
struct Staging {
    path: PathBuf,
    committed: bool,
}

fn sibling(out: &Path, tag: &str) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    out.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

impl Staging {
    fn create(out: &Path) -> Result<Self> {
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let path = sibling(out, "partial");
        if path.exists() {
            // Left behind by a killed export of this same process id.
            std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
        std::fs::create_dir(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Staging {
            path,
            committed: false,
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the finished folder to `out`, replacing an existing one only with `force`.
    fn commit(mut self, out: &Path, force: bool) -> Result<()> {
        let mut replaced = None;
        if out.exists() {
            let empty = std::fs::read_dir(out)
                .map_err(|e| Error::io(out, e))?
                .next()
                .is_none();
            if empty {
                std::fs::remove_dir(out).map_err(|e| Error::io(out, e))?;
            } else {
                check_destination(out, force)?;
                let old = sibling(out, "replaced");
                std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
                replaced = Some(old);
            }
        }
        if let Err(e) = std::fs::rename(&self.path, out) {
            if let Some(old) = &replaced {
                // Put the previous folder back rather than leave nothing.
                let _ = std::fs::rename(old, out);
            }
            return Err(Error::io(out, e));
        }
        self.committed = true;
        if let Some(old) = replaced {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
